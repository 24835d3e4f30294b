"""Upstream checkpoints in and out: payload variants, bad input, export, init-special, api.load."""

import collections
import json
import os
import pickle
import zipfile
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
import torch

import mypt_jax
from mypt_jax import convert
from mypt_jax.data.tokenizer import Tokenizer, head_tokenizer
from mypt_jax.interop import model_io, torch_pickle, upstream
from tests.test_model import ARCHS, PROMPT_IDS, TINY, greedy_nocache
from tests.torch_reference import Cfg, TorchGPT, load_upstream_dir, write_upstream_dir

SEED_TOKENIZER = Tokenizer().get_state()
HEAD_TOKENIZER = head_tokenizer().get_state()


def make_ref(arch: str, seed: int = 0) -> TorchGPT:
    return TorchGPT(Cfg(**{**TINY, **ARCHS[arch]})).randomize_(seed).eval()


def torch_logits(model: TorchGPT, ids=PROMPT_IDS) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).numpy()[0]


@pytest.fixture(scope="module")
def refs():
    return {arch: make_ref(arch, seed=i) for i, arch in enumerate(sorted(ARCHS))}


def write(ref, path, arch, **kw):
    tok = HEAD_TOKENIZER if arch == "head" else SEED_TOKENIZER
    gen = "seed" if arch == "seed" else "head"
    return write_upstream_dir(ref, path, generation=gen, tokenizer_state=tok, **kw)


# ----- import: both generations, logits and greedy continuation -----

@pytest.mark.parametrize("arch", ["seed", "head"])
def test_import_matches_torch_logits_and_greedy(refs, tmp_path, arch):
    src = write(refs[arch], tmp_path / "up", arch)
    summary = convert.import_checkpoint(src, tmp_path / "ours")
    assert summary["generation"] == arch
    assert summary["tied_weight_storage"] == "shared"
    ours = mypt_jax.load(tmp_path / "ours")
    assert ours.tokenizer.get_state() == (HEAD_TOKENIZER if arch == "head" else SEED_TOKENIZER)
    got = ours.logits(PROMPT_IDS)
    assert got.dtype == np.float32 and got.shape == (25, 50304)
    assert np.abs(got - torch_logits(refs[arch])).max() <= 1e-4
    assert greedy_nocache(ours.module, PROMPT_IDS, 32) == refs[arch].greedy(PROMPT_IDS, 32)
    # the upstream dir loaded directly gives the same logits as our converted checkpoint
    np.testing.assert_array_equal(mypt_jax.load(src).logits(PROMPT_IDS), got)
    # sequences of different lengths are scored packed: each as if alone
    seqs = [PROMPT_IDS[3:20], PROMPT_IDS, PROMPT_IDS[:7], PROMPT_IDS[5:9]]
    for seq, packed in zip(seqs, ours.logits(seqs), strict=True):
        assert packed.shape == (len(seq), 50304)
        np.testing.assert_allclose(packed, ours.logits(seq), atol=2e-5, rtol=0)


@pytest.mark.parametrize("save_dtype,payload,tied_twice", [
    ("bf16", "dict", True),     # what upstream training writes: each tied key cast separately
    ("fp16", "raw", False),
    ("bf16", "raw", False),
    (None, "raw", True),
])
def test_payload_variants_are_bit_exact(refs, tmp_path, save_dtype, payload, tied_twice):
    ref = refs["seed"]
    src = write(ref, tmp_path / "up", "seed", save_dtype=save_dtype, payload=payload,
                tied_twice=tied_twice)
    ckpt = upstream.read_upstream(src)
    assert ckpt.source["tied_weight_storage"] == ("twice" if tied_twice else "shared")
    want_dtype = {"bf16": ml_dtypes.bfloat16, "fp16": np.float16, None: np.float32}[save_dtype]
    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, None: torch.float32}[save_dtype]
    sd = ref.state_dict()
    qkv = sd["blocks.1.sa.qkv.weight"].to(tdt).float().numpy()
    assert ckpt.params["blocks"]["qkv_kernel"].dtype == want_dtype
    np.testing.assert_array_equal(ckpt.params["blocks"]["qkv_kernel"][1].astype(np.float32), qkv.T)
    np.testing.assert_array_equal(ckpt.params["wte"].astype(np.float32),
                                  sd["token_embedding_table.weight"].to(tdt).float().numpy())
    # logits against the torch model as upstream GPT.load builds it from that payload on CPU
    model = mypt_jax.load(src)
    assert np.abs(model.logits(PROMPT_IDS) - torch_logits(load_upstream_dir(src))).max() <= 1e-4


def test_tied_key_absent_and_tied_copies_that_differ(refs, tmp_path):
    sd = {k: v.numpy() for k, v in refs["seed"].state_dict().items()}
    cfg = mypt_jax.model.ModelConfig.from_upstream({**TINY, **ARCHS["seed"]})
    sd_once = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    params, info = upstream.params_from_state_dict(sd_once, cfg, "x")
    assert info.tied_storage == "absent"
    np.testing.assert_array_equal(params["wte"], sd["token_embedding_table.weight"])
    differing = dict(sd, **{"lm_head.weight": sd["lm_head.weight"] + 1.0})
    params, info = upstream.params_from_state_dict(differing, cfg, "x")
    assert "as upstream GPT.load does" in info.notes[0]
    np.testing.assert_array_equal(params["wte"], differing["lm_head.weight"])


def test_legacy_single_file(refs, tmp_path):
    ref = refs["head"]
    run = tmp_path / "run"
    run.mkdir()
    cfg = ref.cfg.config_json("head")
    torch.save({"config": cfg, "model_state_dict": ref.state_dict(), "tokenizer": HEAD_TOKENIZER,
                "step": 12, "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.1}]}},
               run / "final.pt")
    model = mypt_jax.load(run)  # the directory: final.pt is found
    assert model.source["format"] == "upstream legacy single file"
    assert np.abs(model.logits(PROMPT_IDS) - torch_logits(ref)).max() <= 1e-4
    summary = convert.import_checkpoint(run / "final.pt", tmp_path / "ours")
    assert summary["generation"] == "head"
    assert model_io.read_source(tmp_path / "ours")["training_state"] == {"step": 12}


# ----- export -----

@pytest.mark.parametrize("arch,dtype", [("head", None), ("mixed", "fp16"), ("seed", "bf16")])
def test_export_reimport_bit_exact_and_loads_in_torch(refs, tmp_path, arch, dtype):
    ref = refs[arch]
    convert.import_checkpoint(write(ref, tmp_path / "up", arch), tmp_path / "ours")
    convert.export_checkpoint(tmp_path / "ours", tmp_path / "exported", dtype)
    cfg = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert cfg["device"] == "cpu" and len(cfg) == 26 and cfg["pos_encoding"] == ref.cfg.pos_encoding
    assert json.loads((tmp_path / "exported" / "training_state.json").read_text())["step"] == 7
    # upstream GPT.load reads the payload with torch.load; weights_only proves it is plain data
    payload = torch.load(tmp_path / "exported" / "model.pt", weights_only=True)
    assert payload["checkpoint_dtype"] == (dtype or "fp32")
    reloaded = load_upstream_dir(tmp_path / "exported")
    tol = 1e-4 if dtype is None else 0.05
    assert np.abs(torch_logits(reloaded) - torch_logits(ref)).max() <= tol
    convert.import_checkpoint(tmp_path / "exported", tmp_path / "again")
    a = model_io.load_params(tmp_path / "ours")
    b = model_io.load_params(tmp_path / "again")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x = x.astype(y.dtype) if dtype else x  # a cast export compares in the payload dtype
        np.testing.assert_array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8))
    # our model from the re-import equals torch on the exported file
    assert np.abs(mypt_jax.load(tmp_path / "again").logits(PROMPT_IDS)
                  - torch_logits(reloaded)).max() <= 1e-4


def test_cli_import_export(refs, tmp_path, capsys):
    src = write(refs["seed"], tmp_path / "up", "seed", save_dtype="bf16")
    assert convert.main(["import", str(src), str(tmp_path / "ours")]) == 0
    assert json.loads(capsys.readouterr().out)["payload_dtype"] == "bf16"
    assert convert.main(["export", str(tmp_path / "ours"), str(tmp_path / "exp")]) == 0
    assert convert.main(["import", str(src), str(tmp_path / "ours")]) == 1  # no overwrite
    assert "already exists" in capsys.readouterr().err


# ----- bad input -----

def _system_pickle(marker: Path) -> bytes:
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    return pickle.dumps({"state_dict": Evil()}, protocol=2)


def _zip_with_pickle(path: Path, data_pkl: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model/data.pkl", data_pkl)
        zf.writestr("model/version", "3\n")
    return path


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "storage_reduce"])
def test_malicious_pickle_is_refused_without_running(refs, tmp_path, kind):
    marker = tmp_path / "pwned"
    if kind == "os.system":
        data = _system_pickle(marker)
    elif kind == "builtins.eval":
        data = (b"\x80\x02cbuiltins\neval\nX" + len(f"open('{marker}','w')").to_bytes(4, "little")
                + f"open('{marker}','w')".encode() + b"\x85R.")
    else:  # an allowed name used as a callable: still nothing runs
        data = b"\x80\x02ctorch\nFloatStorage\n)R."
    up = write(refs["seed"], tmp_path / "up", "seed")
    _zip_with_pickle(up / "model.pt", data)
    error = torch_pickle.UnsafeCheckpointError if kind != "storage_reduce" else torch_pickle.CheckpointError
    with pytest.raises(error, match=r"model\.pt"):
        convert.import_checkpoint(up, tmp_path / "ours")
    assert not marker.exists()
    assert not (tmp_path / "ours").exists()


def test_truncated_and_legacy_format_refused(refs, tmp_path):
    up = write(refs["seed"], tmp_path / "up", "seed")
    blob = (up / "model.pt").read_bytes()
    (up / "model.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(torch_pickle.CheckpointError, match=r"model\.pt: not a readable torch zip"):
        upstream.read_upstream(up)
    torch.save(refs["seed"].state_dict(), up / "model.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(torch_pickle.CheckpointError, match="legacy"):
        upstream.read_upstream(up)


def _sd(ref):
    return collections.OrderedDict((k, v.clone()) for k, v in ref.state_dict().items())


def test_missing_extra_and_misshaped_keys_refused(refs, tmp_path):
    ref = refs["seed"]
    cases = {
        "missing key 'blocks.1.ln2.bias'": lambda sd: sd.pop("blocks.1.ln2.bias"),
        "unexpected key 'ln_f.running_mean'":
            lambda sd: sd.__setitem__("ln_f.running_mean", torch.zeros(64)),
        r"the config disagrees with the weights \(n_layer: config says 2, weights say 3\)":
            lambda sd: sd.__setitem__("blocks.2.sa.qkv.weight", sd["blocks.1.sa.qkv.weight"]),
        r"key 'blocks.0.fwd.net.0.weight' has shape \(256, 32\)":
            lambda sd: sd.__setitem__("blocks.0.fwd.net.0.weight", torch.zeros(256, 32)),
    }
    for message, damage in cases.items():
        d = tmp_path / str(len(message))
        write(ref, d, "seed")
        sd = _sd(ref)
        damage(sd)
        torch.save(sd, d / "model.pt")
        with pytest.raises(upstream.UpstreamError, match=rf"{d}/model\.pt: {message}"):
            upstream.read_upstream(d)


def test_config_weights_and_token_map_disagreements_refused(refs, tmp_path):
    up = write(refs["head"], tmp_path / "up", "head")
    cfg = json.loads((up / "config.json").read_text())
    for k in ("pos_encoding", "mlp_type", "norm_type"):
        cfg.pop(k)  # a seed-era config.json beside HEAD weights
    (up / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(upstream.UpstreamError, match=r"model\.pt: the config disagrees .*pos_encoding: "
                       r"config says 'learned', weights say 'rope'"):
        upstream.read_upstream(up)
    up = write(refs["seed"], tmp_path / "up2", "seed")
    cfg = json.loads((up / "config.json").read_text())
    (up / "config.json").write_text(json.dumps({**cfg, "n_embd": 32}))
    with pytest.raises(upstream.UpstreamError, match=r"key 'token_embedding_table.weight' has shape"):
        upstream.read_upstream(up)
    (up / "config.json").write_text(json.dumps(cfg))
    tok = dict(SEED_TOKENIZER, model_vocab_size=50432)
    (up / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(upstream.UpstreamError, match=r"tokenizer\.json: tokenizer model_vocab_size 50432"):
        upstream.read_upstream(up)
    bad = json.loads(json.dumps(SEED_TOKENIZER))
    bad["special_token_encoder"]["<myPT_eot>"] = bad["special_tokens_by_name"]["myPT_eot"] = 50310
    (up / "tokenizer.json").write_text(json.dumps(bad))
    with pytest.raises(upstream.UpstreamError, match=r"tokenizer\.json: .*myPT_eot.* has id 50310"):
        upstream.read_upstream(up)


# ----- init-special -----

def test_init_special_embeddings_matches_spec(refs, tmp_path):
    ref = refs["seed"]
    src = write(ref, tmp_path / "domain_v5", "seed", save_dtype="bf16")
    (src / "optimizer.pt").write_bytes(b"stale")
    summary = convert.init_special(src, tmp_path / "ready")
    assert summary["targets"]["50263"] == [562, 10167, 25, 27]  # spec §3 table
    assert summary["targets"]["50271"] == [437, 13, 198]
    dst = tmp_path / "ready"
    assert (dst / "optimizer.pt").read_bytes() == b"stale"
    assert (dst / "config.json").read_text() == (src / "config.json").read_text()
    before = torch.load(src / "model.pt", weights_only=True)
    after = torch.load(dst / "model.pt", weights_only=True)
    assert after["checkpoint_dtype"] == "bf16" and after["model_dtype"] == "float32"  # kept
    emb0 = before["state_dict"]["token_embedding_table.weight"].float()
    emb1 = after["state_dict"]["token_embedding_table.weight"]
    assert emb1.dtype == torch.float32
    assert after["state_dict"]["lm_head.weight"].data_ptr() == emb1.data_ptr()  # tied: shared
    touched = {50257: [10057, 25, 27], 50258: [10057, 29, 14], 50259: [7220, 25, 27],
               50260: [7220, 29, 14], 50263: [562, 10167, 25, 27], 50264: [562, 10167, 29, 14],
               50271: [437, 13, 198]}
    for target, ids in touched.items():
        torch.testing.assert_close(emb1[target], emb0[ids].mean(0), rtol=0, atol=0)
    others = [i for i in range(emb0.shape[0]) if i not in touched]
    assert torch.equal(emb1[others], emb0[others])
    assert torch.equal(after["state_dict"]["lm_head.bias"], before["state_dict"]["lm_head.bias"].float())
    assert torch.equal(after["state_dict"]["blocks.0.sa.qkv.weight"],
                       before["state_dict"]["blocks.0.sa.qkv.weight"].float())
    mypt_jax.load(dst)  # still a valid upstream checkpoint


def test_load_accepts_a_training_run_directory(tmp_path):
    from flax import nnx

    import mypt_jax
    from mypt_jax.data.tokenizer import Tokenizer
    from mypt_jax.interop import model_io
    from mypt_jax.model import GPT, ModelConfig

    config = ModelConfig(block_size=32, n_embd=32, n_head=2, n_layer=1, dropout=0.0)
    module = GPT(config, rngs=nnx.Rngs(0))
    model_io.save_model(tmp_path / "run" / model_io.RUN_MODEL_DIR, module, config, Tokenizer())
    ids = [50257, 1639, 389]
    np.testing.assert_array_equal(
        mypt_jax.load(tmp_path / "run").logits(ids), mypt_jax.load(tmp_path / "run" / "model").logits(ids)
    )


def test_a_damaged_model_dir_is_one_line_for_load_and_convert(tmp_path, capsys):
    from flax import nnx

    import mypt_jax
    from mypt_jax import convert
    from mypt_jax.data.tokenizer import Tokenizer
    from mypt_jax.interop import model_io
    from mypt_jax.model import GPT, ModelConfig

    config = ModelConfig(block_size=32, n_embd=32, n_head=2, n_layer=1, dropout=0.0)
    src = model_io.save_model(tmp_path / "model", GPT(config, rngs=nnx.Rngs(0)), config,
                              Tokenizer())
    largest = max((p for p in Path(src, model_io.PARAMS_DIR).rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    with largest.open("r+b") as f:
        f.truncate(100)

    with pytest.raises(model_io.ModelCheckpointError) as raised:
        mypt_jax.load(src)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(
        f"{src / model_io.PARAMS_DIR}: cannot restore parameters (the model directory is damaged")
    assert "value of size 100" in message  # tensorstore's own reason, not orbax's wrapper

    assert convert.main(["export", str(src), str(tmp_path / "up")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    # The same one-line error (which array's read fails first can differ between two reads).
    head = message.split(" (the model directory is damaged")[0]
    assert len(err) == 1 and err[0].startswith(f"error: {head} (the model directory is damaged"), err
    assert "value of size 100" in err[0]
    assert not (tmp_path / "up").exists()
