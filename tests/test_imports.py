"""A fast, quiet start: the tokenizer and checkpoint API import neither TensorFlow nor SeqIO, and TensorFlow's C++
start-up logging is quiet unless the user sets TF_CPP_MIN_LOG_LEVEL. Each check runs in a fresh interpreter, since
this one has imported TensorFlow already (other tests)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from lsi.checkpoints import registry
from lsi.native_logs import without_quiet_lines

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
# Prints which of the heavy modules the code before it imported, as JSON.
_REPORT_HEAVY = "\nimport json, sys\nprint(json.dumps(sorted({'tensorflow', 'seqio'} & set(sys.modules))))\n"


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter, with TF_CPP_MIN_LOG_LEVEL as `env` gives it (unset otherwise)."""
    environ = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**environ, **env}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _heavy_modules(code: str) -> list[str]:
    return json.loads(_python(code + _REPORT_HEAVY).stdout.splitlines()[-1])


def test_vocab_and_checkpoints_import_no_tensorflow():
    assert _heavy_modules("import lsi.vocab, lsi.checkpoints") == []


def test_tokenizing_and_loading_a_checkpoint_import_no_tensorflow():
    try:
        registry.resolve_model_path(MODEL)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    code = f"""
from lsi.checkpoints import load_config
from lsi.vocab import encode_model_input, load_vocabulary
vocab = load_vocabulary({MODEL!r})
prompt = vocab.apply_chat_template([{{"role": "user", "content": "What is 12 + 7?"}}])
assert vocab.detokenize(encode_model_input(vocab, prompt)) == prompt
assert load_config({MODEL!r}).vocab_size == vocab.vocab_size
"""
    assert _heavy_modules(code) == []


def test_importing_lsi_sets_only_the_log_level():
    code = ("import os, sys, lsi\n"
            "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], any(type(f).__name__ == '_QuietTensorflowImport' "
            "for f in sys.meta_path))")
    assert _python(code).stdout.split() == ["2", "False"]  # a library import leaves the process's stderr alone
    assert _python(code, TF_CPP_MIN_LOG_LEVEL="0").stdout.split() == ["0", "False"]


def test_the_commands_tensorflow_start_up_is_quiet_by_default():
    code = ("import os\nfrom lsi.native_logs import quiet_tensorflow_import\nquiet_tensorflow_import()\n"
            "import tensorflow\nprint(os.environ['TF_CPP_MIN_LOG_LEVEL'])")
    result = _python(code)
    assert result.stdout.split() == ["2"]
    assert "absl::InitializeLog" not in result.stderr and "cudart_stub" not in result.stderr, result.stderr
    shown = _python(code, TF_CPP_MIN_LOG_LEVEL="0")  # a user's 0: TF prints everything
    assert shown.stdout.split() == ["0"]


def test_without_quiet_lines():
    text = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            "I0000 00:00:1796051822.856744   18102 cudart_stub.cc:31] Could not find cuda drivers\n"
            "W0000 00:00:1796051822.9   18102 some.cc:7] a warning\n"
            "E0000 00:00:1796051823.0   18102 other.cc:9] an error\n"
            "/x/y.py:3: DeprecationWarning: kept\n")
    assert without_quiet_lines(text, 2) == ("E0000 00:00:1796051823.0   18102 other.cc:9] an error\n"
                                            "/x/y.py:3: DeprecationWarning: kept\n")
    assert without_quiet_lines(text, 1) == "".join(text.splitlines(keepends=True)[2:])
