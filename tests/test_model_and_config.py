"""Model files and paths: clear errors for bad input, shapes that match TinyLlama 1.1B."""

from __future__ import annotations

import numpy as np
import pytest

from readfirst.config import Paths
from readfirst.errors import ModelError
from readfirst.targets.llama_cpp.model import ModelShape, tensor_shapes, validate_gguf


def test_tinyllama_shapes_have_1_1b_parameters():
    total = sum(int(np.prod(dims)) for _, dims in tensor_shapes(ModelShape()))
    assert 1.09e9 < total < 1.11e9
    names = [n for n, _ in tensor_shapes(ModelShape())]
    assert len(names) == len(set(names)) == 3 + 22 * 9
    assert dict(tensor_shapes(ModelShape()))["blk.0.attn_k.weight"] == (256, 2048)  # 4 KV heads of 64


def test_model_keys_change_with_parameters():
    assert ModelShape().key("Q4_0") != ModelShape(seed=1).key("Q4_0") != ModelShape().key("Q8_0")


@pytest.mark.parametrize("content,match", [
    (None, "does not exist"),
    (b"", "not a GGUF"),
    (b"PK\x03\x04" + b"\0" * 100, "not a GGUF"),
    (b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + (0).to_bytes(8, "little"), "corrupt"),
    (b"GGUF" + (3).to_bytes(4, "little") + (5).to_bytes(8, "little") + (2).to_bytes(8, "little") + b"\x01" * 30,
     "corrupt"),
])
def test_bad_model_files_are_clear_errors(tmp_path, content, match):
    path = tmp_path / "m.gguf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=match):
        validate_gguf(path)


def test_a_directory_is_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="not a file"):
        validate_gguf(tmp_path)


def test_paths_follow_flags_then_environment_then_defaults(tmp_path):
    env = {"READFIRST_HOME": str(tmp_path / "h")}
    assert Paths.resolve(environ=env).home == tmp_path / "h"
    assert Paths.resolve(environ=env).cache == tmp_path / "h" / "cache"
    assert Paths.resolve(tmp_path / "flag", environ=env).home == tmp_path / "flag"
    both = Paths.resolve(environ={**env, "READFIRST_CACHE": str(tmp_path / "c")})
    assert both.cache == tmp_path / "c" and both.knowledge_base == tmp_path / "h" / "knowledge_base"
    assert Paths.resolve(environ={}).home.name == "readfirst"


@pytest.mark.parametrize("metrics, shape", [(None, (512, 128)), (("tg",), (0, 128)), (("tg128",), (0, 128)),
                                            (("pp",), (512, 0)), (("pp512", "tg"), (512, 128)),
                                            (("bytes",), (512, 128))])
def test_llama_cpp_measures_only_the_tests_asked_for(tmp_path, metrics, shape):
    """A run asked for tg alone runs llama-bench with -p 0 (the pp pass is most of a run's time); a name the
    target does not know measures everything."""
    from types import SimpleNamespace

    from readfirst.sources import SourceRepo
    from readfirst.targets.llama_cpp.target import BenchOptions, LlamaCppTarget, make_variant, native_config
    target = LlamaCppTarget(Paths(home=tmp_path, cache=tmp_path / "cache"), None, SourceRepo(tmp_path, "b" * 40, "t"))
    asked = []

    def bench(commit, *, model, options, config):
        asked.append((options.n_prompt, options.n_gen, options.repetitions))
        return SimpleNamespace(samples=[], cpu="c", threads=2, cpus="0,1", flash_attn=True, duration_s=1.0)
    target.bench = bench
    target.measure("b" * 40, make_variant(native_config(), BenchOptions(), tmp_path / "m.gguf"), metrics=metrics)
    assert asked == [(*shape, 1)]


def test_llama_cpps_own_run_passes_every_argument_of_the_base_run_through(tmp_path):
    """LlamaCppTarget._run adds the models and the compiler cache to GitTarget._run: an argument the base grew
    (`collect`) reached the override as a TypeError once, and the logits check with it."""
    from readfirst.records import CommandResult, Mount
    from readfirst.sources import SourceRepo
    from readfirst.targets.llama_cpp.logits import KLD_MARKERS
    from readfirst.targets.llama_cpp.target import LlamaCppTarget

    class Recording:
        def run(self, command, **kw):
            self.kw = kw
            return CommandResult(command, 0, 0.01, "", 0, False, False, None)

    sandbox = Recording()
    target = LlamaCppTarget(Paths(home=tmp_path, cache=tmp_path / "cache"), sandbox, SourceRepo(tmp_path, "b" * 40, "t"))
    (tmp_path / "kld").mkdir()
    r, out = target._run("true", timeout_s=7, log_name="kld", mounts=[Mount(tmp_path / "kld", "/kld", True)],
                         workdir="/w", cpuset="0", env={"A": "1"}, collect=KLD_MARKERS)
    target._discard(out)
    kw = sandbox.kw
    assert (kw["collect"], kw["cpuset"], kw["workdir"], kw["timeout_s"]) == (KLD_MARKERS, "0", "/w", 7)
    assert kw["env"]["A"] == "1" and kw["env"]["CCACHE_DISABLE"] == "1"
    assert [m.target for m in kw["mounts"]] == ["/out", "/models", "/kld"]
