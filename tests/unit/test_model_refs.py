"""Model references as every program spells them: the built-in model, hf:org/repo:file.gguf, file:/path."""

from __future__ import annotations

import os

import pytest

from shared.errors import InvalidRequest
from shared.models import BUILTIN_MODEL, ModelRef, ModelReferenceError, alias_of, parse_reference


@pytest.mark.parametrize("reference", ["smollm2-135m", "  smollm2-135m\n"])
def test_the_builtin_model(reference):
    assert BUILTIN_MODEL == "smollm2-135m"
    assert parse_reference(reference) == ModelRef("builtin", "smollm2-135m")


@pytest.mark.parametrize("reference, repo, file", [
    ("hf:test-org/tiny-GGUF:smollm2-135m-q4_1.gguf", "test-org/tiny-GGUF", "smollm2-135m-q4_1.gguf"),
    ("hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:smollm2-135m-instruct-q8_0.gguf",
     "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "smollm2-135m-instruct-q8_0.gguf"),
    ("hf:org/repo.v2:Q4_K_M/model-00001-of-00002.gguf", "org/repo.v2", "Q4_K_M/model-00001-of-00002.gguf"),
    ("hf:org/repo:a/b/c/deep.gguf", "org/repo", "a/b/c/deep.gguf"),
])
def test_hf_references_split_into_repo_and_file(reference, repo, file):
    assert parse_reference(f" {reference} ") == ModelRef("hf", reference, repo=repo, file=file)


@pytest.mark.parametrize("reference", [
    "hf:just-a-repo",
    "hf:org/repo",
    "hf:org/repo:",
    "hf:org/repo:weights.bin",  # not a GGUF
    "hf:org/repo:model.GGUF.txt",
    "hf:org:model.gguf",  # no repo name
    "hf:org/sub/repo:model.gguf",  # a repo is org/name, nothing deeper
    "hf:/repo:model.gguf",
    "hf:-org/repo:model.gguf",  # an org starts with a letter or digit
    "hf:org/repo:/abs/model.gguf",
    "hf:org/repo:dir//model.gguf",
    "hf:org/repo:my model.gguf",
    "hf:org/repo:../model.gguf",  # no way out of the repo
    "hf:org/repo:a/../../model.gguf",
    "hf:org/repo:a/../model.gguf",
])
def test_malformed_hf_references_are_refused_with_an_example(reference):
    with pytest.raises(ModelReferenceError) as err:
        parse_reference(reference)
    assert err.value.message.startswith(f"Malformed hf: reference '{reference}'. Expected hf:<org>/<repo>:<file>.gguf")
    assert "for example hf:HuggingFaceTB/" in err.value.message


def test_dots_inside_a_file_name_are_not_a_parent_directory():
    ref = parse_reference("hf:org/repo:v1..2/model..q4.gguf")
    assert ref.file == "v1..2/model..q4.gguf"


def test_file_references_become_absolute_and_canonical(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real = (tmp_path / "real").resolve()
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    expected = real / "m.gguf"
    for spelling in ["file:real/m.gguf", f"file:{tmp_path}/link/m.gguf", "file:./real/../link/./m.gguf",
                     f"  file:{real}/m.gguf  "]:
        assert parse_reference(spelling) == ModelRef("file", f"file:{expected}", path=expected), spelling
    assert not expected.exists()  # pure parsing: nothing needs to be there


def test_a_file_reference_expands_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    ref = parse_reference("file:~/models/m.gguf")
    assert ref.path == tmp_path.resolve() / "models" / "m.gguf" and ref.id == f"file:{ref.path}"


@pytest.mark.parametrize("reference", ["file:", "  file:  "])
def test_an_empty_file_reference_asks_for_a_path(reference):
    with pytest.raises(ModelReferenceError) as err:
        parse_reference(reference)
    assert err.value.message == "A file: reference needs a path, e.g. file:/models/my-model.gguf."


@pytest.mark.parametrize("reference, start", [
    ("s3:bucket/x.gguf", "Unknown model reference scheme 's3:'"),
    ("https://example.com/m.gguf", "Unknown model reference scheme 'https:'"),
    ("HF:org/repo:m.gguf", "Unknown model reference scheme 'HF:'"),  # schemes are lower case
    ("llama-7b", "Unknown model 'llama-7b'"),
    ("SmolLM2-135M", "Unknown model 'SmolLM2-135M'"),
    ("/models/m.gguf", "Unknown model '/models/m.gguf'"),  # a bare path needs file:
    ("", "Unknown model ''"),
])
def test_anything_else_is_unknown_and_the_message_lists_the_valid_forms(reference, start):
    with pytest.raises(ModelReferenceError) as err:
        parse_reference(reference)
    assert err.value.message == (f"{start}. Use smollm2-135m (built in), hf:<org>/<repo>:<file>.gguf "
                                 "or file:<path to a .gguf>.")


def test_errors_are_invalid_requests_answered_with_400():
    with pytest.raises(InvalidRequest) as err:
        parse_reference("hf:nope")
    assert type(err.value) is ModelReferenceError
    assert err.value.status == 400 and err.value.code == "BAD_MODEL_REFERENCE"
    assert ModelReferenceError.title == "Bad model reference"


@pytest.mark.parametrize("model_id, alias", [
    (BUILTIN_MODEL, BUILTIN_MODEL),
    ("file:/models/SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct.q4_1"),
    ("hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:smollm2-135m-instruct-q8_0.gguf", "smollm2-135m-instruct-q8_0"),
    ("hf:org/repo:sub/dir/Model.gguf", "model"),
])
def test_every_model_has_a_short_alias(model_id, alias):
    assert alias_of(model_id) == alias
