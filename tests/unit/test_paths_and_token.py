import multiprocessing
import stat

import pytest

from shared.paths import RbeePaths
from shared.token import TokenFileError, load_or_create_token, tokens_equal


def test_rbee_home_overrides_everything(tmp_path):
    paths = RbeePaths.from_env({"RBEE_HOME": str(tmp_path), "XDG_CONFIG_HOME": "/elsewhere"})
    assert paths.config_dir == tmp_path / "config"
    assert paths.data_dir == tmp_path / "data"
    assert paths.state_dir == tmp_path / "state"


def test_xdg_dirs_and_their_defaults(tmp_path):
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": "/xdg/data", "XDG_STATE_HOME": "relative/ignored"}
    paths = RbeePaths.from_env(env)
    assert paths.config_dir == tmp_path / ".config" / "rbee"
    assert str(paths.data_dir) == "/xdg/data/rbee"
    assert paths.state_dir == tmp_path / ".local" / "state" / "rbee"


def test_token_is_created_once_with_mode_0600(rbee_home):
    paths = RbeePaths.from_env()
    assert paths.config_dir == rbee_home / "config"
    token = load_or_create_token(paths)
    assert len(token) >= 32
    assert stat.S_IMODE(paths.token_file.stat().st_mode) == 0o600
    assert load_or_create_token(paths) == token
    assert list(paths.config_dir.iterdir()) == [paths.token_file]  # no temp files left behind


def _create(_):
    return load_or_create_token()


def test_concurrent_first_use_agrees_on_one_token(rbee_home):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        tokens = pool.map(_create, range(8))
    assert len(set(tokens)) == 1


def test_empty_token_file_is_a_clear_error(rbee_home):
    paths = RbeePaths.from_env()
    paths.config_dir.mkdir(parents=True)
    paths.token_file.write_text("\n")
    with pytest.raises(TokenFileError, match="is empty; delete it"):
        load_or_create_token(paths)


def test_tokens_equal():
    assert tokens_equal("abc", "abc")
    assert not tokens_equal("abc", "abd")
    assert not tokens_equal("", "abc")


def test_builtin_model_sha256_from_the_wheel_record_is_the_files():
    import hashlib

    from shared.builtin_model import builtin_model_path, builtin_model_sha256

    assert builtin_model_sha256() == hashlib.sha256(builtin_model_path().read_bytes()).hexdigest()
