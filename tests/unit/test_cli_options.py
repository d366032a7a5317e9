"""The keeper's command line: sampling options come from shared/inference.py, and a bad value is reported
as the option the user typed, from the error's structured field (never by rewriting its text)."""

from __future__ import annotations

import io

import pytest

from keeper_tui.cli import build_parser, operation_for, prompt_from
from shared.inference import SAMPLING_FIELDS
from shared.operations import ANY_HIVE, LOCAL_HIVE, HiveDrain, HiveUpgrade, Infer, WorkerDrain, WorkerList, WorkerSpawn


def parse(*argv: str):
    parser = build_parser()
    return operation_for(parser.parse_args(argv), parser)


def test_every_sampling_field_is_an_option_with_its_default_in_the_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["infer", "--help"])
    help_text = capsys.readouterr().out
    for f in SAMPLING_FIELDS:
        assert "--" + f.name.replace("_", "-") in help_text
    assert "(default 128)" in help_text and "(default 0.8)" in help_text


def test_options_become_the_operation():
    op = parse("infer", "--raw", "--top-k", "5", "--stop", "a", "--stop", "b", "--hive", "gpu_1", "Hello")
    assert op == Infer(prompt="Hello", top_k=5, stop=("a", "b"), hive_id="gpu_1")


def test_a_prompt_is_a_chat_message_by_default_and_its_words_are_joined():
    assert parse("infer", "Hello", "World") == Infer(messages=(("user", "Hello World"),))
    assert parse("infer", "--chat", "Hi") == parse("infer", "Hi")  # --chat is the default, kept for old scripts
    assert parse("infer", "--raw", "Hello", "World") == Infer(prompt="Hello World")


@pytest.mark.parametrize("words, stdin, prompt", [
    (["-"], "from a pipe\n", "from a pipe"),
    ([], "piped in\nover two lines\n", "piped in\nover two lines"),
    (["the", "words"], "ignored", "the words"),
])
def test_the_prompt_comes_from_stdin_for_a_dash_or_a_pipe(words, stdin, prompt):
    assert prompt_from(words, build_parser(), io.StringIO(stdin)) == prompt


@pytest.mark.parametrize("words, stdin", [([], ""), (["-"], " \n"), (["  "], "")])
def test_an_empty_prompt_is_a_usage_error(words, stdin, capsys):
    with pytest.raises(SystemExit) as exit_:
        prompt_from(words, build_parser(), io.StringIO(stdin))
    assert exit_.value.code == 2
    assert "rbee: error: the prompt is empty" in capsys.readouterr().err


def test_chat_and_conversations_take_their_options():
    args = build_parser().parse_args(["chat", "--model", "m", "--hive", "h", "--resume", "conv-1", "--max-tokens",
                                      "8", "--verbose"])
    assert (args.model, args.hive_id, args.resume, args.max_tokens, args.verbose) == ("m", "h", "conv-1", 8, True)
    args = build_parser().parse_args(["conversations", "show", "conv-1"])
    assert (args.action, args.id) == ("show", "conv-1")
    assert build_parser().parse_args(["jobs", "list", "--all"]).all


def test_a_worker_spawn_naming_no_hive_is_placed_by_the_queen():
    assert parse("worker", "spawn") == WorkerSpawn(hive_id=ANY_HIVE)
    assert parse("worker", "spawn", "--hive", "gpu_1") == WorkerSpawn(hive_id="gpu_1")
    assert parse("worker", "spawn", "--embedding") == WorkerSpawn(hive_id=ANY_HIVE, embedding=True)
    assert parse("worker", "list") == WorkerList(hive_id=LOCAL_HIVE)


def test_drains_take_a_deadline():
    assert parse("worker", "drain", "worker-1") == WorkerDrain(id="worker-1")
    assert parse("worker", "drain", "worker-1", "--deadline", "5") == WorkerDrain(id="worker-1", deadline_s=5.0)
    assert parse("hive", "drain", "gpu1", "--deadline", "0") == HiveDrain(alias="gpu1", deadline_s=0.0)
    assert parse("hive", "drain").alias == LOCAL_HIVE
    assert parse("hive", "upgrade", "gpu1") == HiveUpgrade(alias="gpu1")
    assert parse("hive", "upgrade", "--all", "--deadline", "10") == HiveUpgrade(all=True, deadline_s=10.0)


def test_device_and_kv_options_reach_the_operations():
    assert parse("worker", "spawn", "--device", "cuda:1", "--kv-cache-type", "q8_0", "--flash-attn", "on") == \
        WorkerSpawn(hive_id=ANY_HIVE, device="cuda:1", kv_cache_type="q8_0", flash_attn="on")
    assert parse("worker", "spawn").device == "auto"
    assert parse("infer", "--device", "cpu", "hi").device == "cpu"
    assert parse("infer", "hi").device == "auto"


@pytest.mark.parametrize("argv, said", [
    (("infer", "--max-tokens", "0", "hi"), "--max-tokens must be at least 1, not 0"),
    (("infer", "--stop", "", "hi"), "--stop must not contain empty strings"),
    (("worker", "spawn", "--hive", "gpu_1", "--device", "gpu1"), "--device must be auto, cpu or cuda:N (a GPU's index), not 'gpu1'"),
    (("infer", "--device", "cuda", "hi"), "--device must be auto, cpu or cuda:N"),
    (("hive", "start", " "), "ALIAS must not be empty"),
    (("worker", "drain", "worker-1", "--deadline", "-1"), "--deadline must be at least 0, not -1"),
    (("worker", "drain"), "worker drain needs a worker id"),
])
def test_bad_values_name_the_option(argv, said, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(*argv)
    assert exit_.value.code == 2
    assert f"rbee: error: {said}" in capsys.readouterr().err


def test_a_token_file_becomes_the_downloads_token(tmp_path, capsys):
    token = tmp_path / "hf-token"
    token.write_text("hf_abc123\n")
    op = parse("model", "download", "hf:org/gated:f.gguf", "--token-file", str(token))
    assert op.token == "hf_abc123" and op.model == "hf:org/gated:f.gguf"
    for path, words in ((tmp_path / "none", "No such file"), (tmp_path / "empty", "must hold one token")):
        if path.name == "empty":
            path.write_text("\n")
        with pytest.raises(SystemExit):
            parse("model", "download", "hf:org/gated:f.gguf", "--token-file", str(path))
        assert words in capsys.readouterr().err


def test_model_push_copy_and_verify_become_their_operations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    push = parse("model", "push", "m.gguf", "--hive", "gpu-box", "--alias", "mine", "--bwlimit", "50")
    assert (push.name, push.path, push.hive_id, push.alias, push.bwlimit_mb_s) == (
        "model_push", str(tmp_path / "m.gguf"), "gpu-box", "mine", 50.0)  # a path relative to where you are
    assert parse("model", "push", "/m/x.gguf", "--all").all and parse("model", "push", "/m/x.gguf", "--copy").copy
    copy = parse("model", "copy", "mine", "--from", "a", "--to", "b")
    assert (copy.name, copy.model, copy.from_hive, copy.to_hive) == ("model_copy", "mine", "a", "b")
    assert parse("model", "verify").id is None and parse("model", "verify", "mine", "--hive", "a").id == "mine"


@pytest.mark.parametrize("argv, said", [
    (("model", "push"), "needs the path"),
    (("model", "push", "/m/x.gguf", "--all", "--hive", "a"), "exclude each other"),
    (("model", "push", "/m/x.gguf", "--from", "a"), "--from does not go with `model push`"),
    (("model", "copy", "x", "--from", "a"), "needs a model, --from HIVE and --to HIVE"),
    (("model", "download", "smollm2-135m", "--copy"), "--copy does not go with `model download`"),
    (("model", "get", "x", "--token-file", "/t"), "--token-file does not go with `model get`"),
    (("model", "push", "/m/x.gguf", "--alias", "Bad Name"), "--alias must be"),
])
def test_model_options_that_do_not_fit_are_usage_errors(argv, said, capsys):
    with pytest.raises(SystemExit):
        parse(*argv)
    assert said in capsys.readouterr().err


def test_m_is_short_for_model_on_infer_and_chat():
    assert parse("infer", "-m", "mine", "hi").model == "mine"
    assert build_parser().parse_args(["chat", "-m", "mine"]).model == "mine"


def test_embed_takes_texts_from_arguments_or_lines_of_stdin(capsys):
    op = parse("embed", "-m", "mine", "one text", "another")
    assert (op.name, op.input, op.model) == ("embed", ("one text", "another"), "mine")
    from keeper_tui.cli import texts_from
    assert texts_from(["-"], build_parser(), io.StringIO("first\n\nsecond\n")) == ["first", "second"]
    with pytest.raises(SystemExit):
        texts_from([], build_parser(), io.StringIO(""))
    assert "embed needs texts" in capsys.readouterr().err
