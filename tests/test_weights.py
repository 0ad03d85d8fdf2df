"""Weights: official checkpoint layouts, downloads with a cache, and clear errors."""

from __future__ import annotations

import hashlib
import re
import socket
from types import SimpleNamespace

import pytest
import torch

import models
from helpers import perturb_batchnorm
from models import x3d

# Our layout -> the official ones, written out independently of models/x3d.py's tables.
# pytorchvideo: pytorchvideo/models/x3d.py (create_x3d); its stem's conv_t is the spatial
# conv. PySlowFast: slowfast/models/{video_model_builder,resnet_helper,stem_helper,
# head_helper,operators}.py.
PTV_TOP = {
    "stem.conv_xy": "blocks.0.conv.conv_t",
    "stem.conv_t": "blocks.0.conv.conv_xy",
    "stem.bn": "blocks.0.norm",
    "head.conv_5": "blocks.5.pool.pre_conv",
    "head.bn_5": "blocks.5.pool.pre_norm",
    "head.lin_5": "blocks.5.pool.post_conv",
    "head.proj": "blocks.5.proj",
}
PTV_BLOCK = {
    "shortcut": "branch1_conv",
    "shortcut_bn": "branch1_norm",
    "conv_a": "branch2.conv_a",
    "bn_a": "branch2.norm_a",
    "conv_b": "branch2.conv_b",
    "bn_b": "branch2.norm_b.0",
    "se.fc1": "branch2.norm_b.1.block.0",
    "se.fc2": "branch2.norm_b.1.block.2",
    "conv_c": "branch2.conv_c",
    "bn_c": "branch2.norm_c",
}
PSF_TOP = {
    "stem.conv_xy": "s1.pathway0_stem.conv_xy",
    "stem.conv_t": "s1.pathway0_stem.conv",
    "stem.bn": "s1.pathway0_stem.bn",
    "head.conv_5": "head.conv_5",
    "head.bn_5": "head.conv_5_bn",
    "head.lin_5": "head.lin_5",
    "head.proj": "head.projection",
}
PSF_BLOCK = {
    "shortcut": "branch1",
    "shortcut_bn": "branch1_bn",
    "conv_a": "branch2.a",
    "bn_a": "branch2.a_bn",
    "conv_b": "branch2.b",
    "bn_b": "branch2.b_bn",
    "se.fc1": "branch2.se.fc1",
    "se.fc2": "branch2.se.fc2",
    "conv_c": "branch2.c",
    "bn_c": "branch2.c_bn",
}


def to_layout(state: dict, layout: str) -> dict:
    top, block = (PTV_TOP, PTV_BLOCK) if layout == "pytorchvideo" else (PSF_TOP, PSF_BLOCK)
    out = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module in top:
            out[f"{top[module]}.{param}"] = value
            continue
        stage, index, part = re.fullmatch(r"stages\.(\d)\.(\d+)\.(.+)", module).groups()
        if layout == "pytorchvideo":
            out[f"blocks.{int(stage) + 1}.res_blocks.{index}.{block[part]}.{param}"] = value
        else:
            out[f"s{int(stage) + 2}.pathway{0}_res{index}.{block[part]}.{param}"] = value
    return out


@pytest.fixture(scope="module")
def xs():
    """A perturbed X3D-XS in our layout, a test clip and its logits."""
    torch.manual_seed(0)
    model = models.create("x3d_xs")
    perturb_batchnorm(model)
    model.eval()
    clip = model.example_inputs()[0]
    with torch.no_grad():
        logits = model(clip)
    return SimpleNamespace(state=model.state_dict(), clip=clip, logits=logits)


def save(path, obj) -> bytes:
    torch.save(obj, path)
    return path.read_bytes()


@pytest.fixture
def ptv_file(tmp_path, xs):
    """X3D-XS in the pytorchvideo zoo layout: {"model_state": state_dict}."""
    path = tmp_path / "X3D_XS.pyth"
    save(path, {"model_state": to_layout(xs.state, "pytorchvideo")})
    return path


def logits(model, clip):
    with torch.no_grad():
        return model(clip)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


pytestmark = pytest.mark.usefixtures("isolated_cache")


# -- layouts ---------------------------------------------------------------------------


def test_test_layout_matches_pytorchvideo_keys():
    ptv_x3d = pytest.importorskip("pytorchvideo.models.x3d")
    ref = ptv_x3d.create_x3d(input_clip_length=4, input_crop_size=160, depth_factor=2.2)
    ours = models.create("x3d_xs").state_dict()
    ref_state = ref.state_dict()
    converted = to_layout(ours, "pytorchvideo")
    assert set(converted) == set(ref_state)
    assert all(converted[k].shape == ref_state[k].shape for k in ref_state)


def test_pytorchvideo_layout_loads(ptv_file, xs):
    model = models.create("x3d_xs", weights=ptv_file)
    assert not model.training
    torch.testing.assert_close(logits(model, xs.clip), xs.logits, rtol=0, atol=0)
    assert model.weights_id == hashlib.sha256(ptv_file.read_bytes()).hexdigest()[:16]
    assert model.meta.labels[0] == "abseiling"


def test_plain_state_dict_in_our_layout_loads(tmp_path, xs):
    path = tmp_path / "ours.pt"
    # DistributedDataParallel's "module." prefix is stripped.
    save(path, {f"module.{k}": v for k, v in xs.state.items()})
    model = models.create("x3d_xs", weights=str(path))
    torch.testing.assert_close(logits(model, xs.clip), xs.logits, rtol=0, atol=0)


def pyslowfast_checkpoint(state: dict) -> dict:
    # PySlowFast's save_checkpoint stores the config as a YAML string.
    cfg = "MODEL:\n  ARCH: x3d\n  MODEL_NAME: X3D\nX3D:\n  DEPTH_FACTOR: 2.2\n"
    return {"epoch": 300, "model_state": to_layout(state, "pyslowfast"), "cfg": cfg}


def test_pyslowfast_layout_loads_like_pytorchvideo(tmp_path, ptv_file, xs):
    # PySlowFast has a BatchNorm on the first stage's shortcut; an identity one makes it
    # the same network as the pytorchvideo checkpoint.
    state = dict(xs.state)
    bn = "stages.0.0.shortcut_bn"
    state[f"{bn}.weight"] = torch.ones(24)
    state[f"{bn}.bias"] = torch.zeros(24)
    state[f"{bn}.running_mean"] = torch.zeros(24)
    state[f"{bn}.running_var"] = torch.full((24,), 1.0 - 1e-5)  # (var + eps) == 1
    state[f"{bn}.num_batches_tracked"] = torch.tensor(0)
    path = tmp_path / "x3d_xs_pyslowfast.pyth"
    checkpoint = pyslowfast_checkpoint(state)
    assert (
        len([k for k in checkpoint["model_state"] if k.startswith("s2.pathway0_res0.branch1_bn.")])
        == 5
    )
    assert "s2.pathway0_res0.branch1_bn.running_var" in checkpoint["model_state"]
    save(path, checkpoint)

    model = models.create("x3d_xs", weights=path)
    assert sum(p.numel() for p in model.parameters()) == 3_794_322
    from_ptv = models.create("x3d_xs", weights=ptv_file)
    torch.testing.assert_close(
        logits(model, xs.clip), logits(from_ptv, xs.clip), rtol=1e-5, atol=1e-6
    )


def test_pyslowfast_shortcut_norm_is_applied(tmp_path, xs):
    reference = x3d._build("x3d_xs", 400, shortcut_norm=True)
    reference.load_state_dict(xs.state, strict=False)
    perturb_batchnorm(reference.stages[0][0].shortcut_bn, seed=5)
    reference.eval()
    path = tmp_path / "x3d_xs_pyslowfast.pyth"
    save(path, pyslowfast_checkpoint(reference.state_dict()))

    model = models.create("x3d_xs", weights=path)
    expected = logits(reference, xs.clip)
    torch.testing.assert_close(logits(model, xs.clip), expected, rtol=0, atol=0)
    # The norm matters: without it the output differs.
    assert float((expected - xs.logits).norm() / xs.logits.norm()) > 1e-3


def test_checkpoint_head_sets_num_classes(tmp_path, xs):
    state = dict(xs.state)
    state["head.proj.weight"] = torch.randn(10, 2048)
    state["head.proj.bias"] = torch.randn(10)
    path = tmp_path / "ten.pt"
    save(path, {"model_state": to_layout(state, "pytorchvideo")})
    model = models.create("x3d_xs", weights=path)
    assert logits(model, xs.clip).shape == (1, 10)
    assert model.meta.labels == tuple(f"class_{i}" for i in range(10))
    assert models.create("x3d_xs", weights=path, num_classes=10).meta.labels[9] == "class_9"


def test_other_labels_get_a_new_classifier_and_keep_the_rest(ptv_file, xs):
    """Fine-tuning Kinetics weights for three labels: the 400-class classifier is dropped
    and newly initialised, every other tensor is the checkpoint's."""
    with pytest.warns(UserWarning, match="400-class classifier.*new 3-class one"):
        model = models.create("x3d_xs", weights=ptv_file, labels=["kettle", "door", "nothing"])
    assert model.meta.labels == ("kettle", "door", "nothing")
    assert logits(model, xs.clip).shape == (1, 3)
    reference = models.create("x3d_xs", weights=ptv_file)
    ours, theirs = model.state_dict(), reference.state_dict()
    for key, value in ours.items():
        if key.startswith("head.proj."):
            assert value.shape[0] == 3
        else:
            assert torch.equal(value, theirs[key]), key
    with pytest.warns(UserWarning, match="new 10-class one"):
        assert models.create("x3d_xs", weights=ptv_file, num_classes=10).meta.labels[9] == "class_9"


def test_labels_must_match_num_classes_and_be_distinct():
    with pytest.raises(models.ModelError, match="2 labels were given for num_classes=3"):
        models.create("x3d_xs", labels=["a", "b"], num_classes=3)
    with pytest.raises(models.ModelError, match="name a more than once"):
        models.create("x3d_xs", labels=["a", "a"])
    with pytest.raises(models.ModelError, match="non-empty list"):
        models.create("x3d_xs", labels="ab")


TINY_AV = {
    "width": 16, "beta_inv": 4, "depths": (1, 1, 1, 1), "slow_frames": 4, "alpha": 2,
    "crop": 64, "short_side": 64, "audio_frames": 64, "n_mels": 40,
}  # fmt: skip


def test_saved_checkpoint_rebuilds_a_reduced_model_with_its_labels(tmp_path):
    torch.manual_seed(0)
    model = models.create("avslowfast_r50", labels=["clap", "whistle"], **TINY_AV)
    perturb_batchnorm(model)
    assert (
        model.meta.crop == 64 and model.meta.audio.n_mels == 40 and model.meta.video[0].frames == 4
    )
    path = models.save_checkpoint(model, tmp_path / "model.pt", epoch=3)
    assert not list(tmp_path.glob(".*"))  # no temporary file left
    saved = torch.load(path, weights_only=True)
    assert saved["model"] == "avslowfast_r50" and saved["labels"] == ["clap", "whistle"]
    assert saved["epoch"] == 3 and saved["options"]["depths"] == [1, 1, 1, 1]
    again = models.create("avslowfast_r50", weights=path)
    assert again.meta.labels == ("clap", "whistle")
    assert again.options == model.options == TINY_AV
    inputs = model.example_inputs()
    with torch.no_grad():
        assert torch.equal(model(*inputs), again(*inputs))
    # Names may be changed at load time (the run config's `labels`).
    assert models.create("avslowfast_r50", weights=path, labels=["a", "b"]).meta.labels == (
        "a",
        "b",
    )
    with pytest.raises(models.WeightsError) as info:
        models.create("avslowfast_r50", weights=path, width=32)
    assert one_line(info.value) == (
        f"weights {path} were built with width=16 but the options ask for width=32: "
        "leave width out to use the checkpoint's"
    )
    # An option equal to the checkpoint's may be given (here a list for its tuple).
    assert models.create("avslowfast_r50", weights=path, depths=[1, 1, 1, 1]).options == TINY_AV


def test_options_are_checked():
    assert "width" in models.build_options("slowfast_r50")
    assert models.build_options("mvit_v1_b") == {}
    with pytest.raises(models.ModelError, match="x3d_xs has no option 'width' .options: "):
        models.create("x3d_xs", width=8)
    with pytest.raises(models.ModelError, match="not divisible by beta_inv"):
        models.create("slowfast_r50", width=30)


def test_orthoformer_checkpoint_round_trips(tmp_path):
    small = {"attention": "orthoformer", "landmarks": 16, "depth": 1, "embed_dim": 16, "heads": 2}
    model = models.create("motionformer_b", seed=0, labels=["a", "b"], **small)
    path = models.save_checkpoint(model, tmp_path / "model.pt")
    again = models.create("motionformer_b", weights=path)
    assert again.options == small and again.cfg == model.cfg
    (clip,) = model.example_inputs()
    with torch.no_grad():
        assert torch.equal(model(clip), again(clip))


def test_checkpoint_options_under_the_old_arch_key_still_load(tmp_path):
    """Checkpoints written before build options were general keep them under "arch"."""
    model = models.create(
        "slowfast_r50", seed=0, width=16, depths=(1, 1, 1, 1), crop=64, short_side=64
    )
    old = {
        "model_state": model.state_dict(),
        "model": "slowfast_r50",
        "labels": list(model.meta.labels),
    }
    save(
        tmp_path / "old.pt",
        {**old, "arch": {"width": 16, "depths": [1, 1, 1, 1], "crop": 64, "short_side": 64}},
    )
    again = models.create("slowfast_r50", weights=tmp_path / "old.pt")
    assert again.options == model.options and again.meta.crop == 64
    save(tmp_path / "bad.pt", {**old, "arch": {"widht": 16}})
    with pytest.raises(models.ModelError) as info:
        models.create("slowfast_r50", weights=tmp_path / "bad.pt")
    assert one_line(info.value).startswith(
        f"weights {tmp_path / 'bad.pt'}: slowfast_r50 has no option 'widht'"
    )


# -- checkpoints that do not fit -------------------------------------------------------


def test_xs_weights_into_l(ptv_file):
    with pytest.raises(models.WeightsError) as info:
        models.create("x3d_l", weights=ptv_file)
    exc = info.value
    text = one_line(exc)
    # X3D-L has 5/10/25/15 blocks per stage, X3D-XS 3/5/11/7; widths are the same.
    assert "stages.0.3.conv_a.weight" in exc.missing
    assert not exc.unexpected and not exc.mismatched
    assert f"{len(exc.missing)} missing, 0 unexpected, 0 mis-shaped" in text
    assert f"... and {len(exc.missing) - 3} more" in text
    assert str(ptv_file) in text and "x3d_l" in text


def test_removed_renamed_and_misshaped_keys(tmp_path, xs):
    state = to_layout(xs.state, "pytorchvideo")
    del state["blocks.2.res_blocks.1.branch2.conv_b.weight"]
    state["blocks.0.normx.weight"] = state.pop("blocks.0.norm.weight")
    state["blocks.0.norm.running_mean"] = torch.zeros(25)
    path = tmp_path / "broken.pyth"
    save(path, {"model_state": state})
    with pytest.raises(models.WeightsError) as info:
        models.create("x3d_xs", weights=path)
    exc = info.value
    assert exc.missing == ["stem.bn.weight", "stages.1.1.conv_b.weight"]
    assert exc.unexpected == ["blocks.0.normx.weight"]
    assert exc.mismatched == [("stem.bn.running_mean", (25,), (24,))]
    text = one_line(exc)
    assert "2 missing, 1 unexpected, 1 mis-shaped" in text
    assert "stages.1.1.conv_b.weight" in text and "blocks.0.normx.weight" in text
    assert "stem.bn.running_mean checkpoint [25] vs model [24]" in text


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.pyth"
    path.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(models.WeightsError) as info:
        models.create("x3d_xs", weights=path)
    text = one_line(info.value)
    assert text.startswith(f"cannot read weights {path}")


def test_truncated_file(tmp_path, ptv_file):
    path = tmp_path / "truncated.pyth"
    path.write_bytes(ptv_file.read_bytes()[:100_000])
    with pytest.raises(models.WeightsError, match="cannot read weights"):
        models.create("x3d_xs", weights=path)


@pytest.mark.parametrize("name", ["nope.pyth", "~nosuchuser-avstream/x.pt"])
def test_missing_file(tmp_path, name):
    # ~user of a user this machine does not have makes Path.expanduser raise RuntimeError
    weights = tmp_path / name if not name.startswith("~") else name
    with pytest.raises(models.WeightsError) as info:
        models.create("x3d_xs", weights=weights)
    assert "not found" in one_line(info.value)


def test_folder_is_called_a_folder(tmp_path):
    with pytest.raises(models.WeightsError) as info:
        models.create("x3d_xs", weights=tmp_path)
    assert one_line(info.value) == (
        f"weights {tmp_path} is a folder: pass a checkpoint file, not a folder "
        "(--weights PATH/TO/FILE.pt)"
    )
    (tmp_path / "best.pt").write_bytes(b"")
    (tmp_path / "last.pt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(models.WeightsError) as info:
        models.create("x3d_xs", weights=tmp_path)
    assert one_line(info.value) == (
        f"weights {tmp_path} is a folder: pass one of its checkpoint files (best.pt, last.pt), "
        f"e.g. --weights {tmp_path / 'best.pt'}"
    )


@pytest.mark.parametrize(
    "content, match",
    [
        ({"model_state": {"fc.weight": torch.zeros(2, 2)}}, "known layout"),
        ({"model_state": {"stem.bn.weight": 3}}, "not tensors"),
        ([1, 2, 3], "no state dict"),
    ],
)
def test_not_an_x3d_checkpoint(tmp_path, content, match):
    path = tmp_path / "other.pt"
    save(path, content)
    with pytest.raises(models.WeightsError, match=match) as info:
        models.create("x3d_xs", weights=path)
    assert str(path) in one_line(info.value)


# -- downloads -------------------------------------------------------------------------


def test_download_url_then_cache(file_server, ptv_file, xs, isolated_cache, capfd):
    body = ptv_file.read_bytes()
    file_server.files["/ckpt/X3D_XS.pyth"] = body
    url = f"{file_server.url}/ckpt/X3D_XS.pyth"

    model = models.create("x3d_xs", weights=url)
    torch.testing.assert_close(logits(model, xs.clip), xs.logits, rtol=0, atol=0)
    assert file_server.requests == ["/ckpt/X3D_XS.pyth"]
    assert f"{len(body)}/{len(body)} bytes" in capfd.readouterr().err
    cached = list(isolated_cache.iterdir())
    assert len(cached) == 1 and cached[0].read_bytes() == body  # no temporary left over

    again = models.create("x3d_xs", weights=url)
    assert file_server.requests == ["/ckpt/X3D_XS.pyth"]  # served from the cache
    assert again.weights_id == model.weights_id == hashlib.sha256(body).hexdigest()[:16]


def test_kinetics400_uses_base_url(file_server, ptv_file, xs, monkeypatch):
    file_server.files["/zoo/X3D_XS.pyth"] = ptv_file.read_bytes()
    monkeypatch.setenv("AVSTREAM_WEIGHTS_BASE_URL", f"{file_server.url}/zoo/")
    model = models.create("x3d_xs", weights="kinetics400")
    torch.testing.assert_close(logits(model, xs.clip), xs.logits, rtol=0, atol=0)
    models.create("x3d_xs", weights="kinetics400")
    assert file_server.requests == ["/zoo/X3D_XS.pyth"]


def test_download_404(file_server, isolated_cache, monkeypatch):
    monkeypatch.setenv("AVSTREAM_WEIGHTS_BASE_URL", file_server.url)
    with pytest.raises(models.WeightsError) as info:
        models.create("x3d_m", weights="kinetics400")
    text = one_line(info.value)
    assert f"{file_server.url}/X3D_M.pyth" in text and "404" in text and "--weights" in text
    assert not isolated_cache.exists() or not any(isolated_cache.iterdir())


def test_download_cut_short_leaves_nothing(file_server, ptv_file, isolated_cache):
    file_server.files["/X3D_XS.cut"] = ptv_file.read_bytes()
    url = f"{file_server.url}/X3D_XS.cut"
    with pytest.raises(models.WeightsError) as info:
        models.create("x3d_xs", weights=url)
    assert url in one_line(info.value)
    assert not any(isolated_cache.iterdir())


def test_download_closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/X3D_XS.pyth"
    with pytest.raises(models.WeightsError) as info:
        models.create("x3d_xs", weights=url)
    text = one_line(info.value)
    assert text.startswith(f"cannot download {url}:")
    assert text.endswith(
        "; check the network connection and the URL, or download the file another way and "
        "pass its path with --weights PATH, or try the pipeline with random weights: --weights none"
    )


def test_offline_default_weights_say_how_to_go_on(isolated_cache, monkeypatch):
    """The default weights cannot be fetched (offline: nothing listens there): the line
    says how to bring the file, and how to try the pipeline without it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AVSTREAM_WEIGHTS_BASE_URL", f"http://127.0.0.1:{port}/zoo")
    with pytest.raises(models.WeightsError) as info:
        models.create("x3d_xs", weights="kinetics400")
    text = one_line(info.value)
    url = f"http://127.0.0.1:{port}/zoo/X3D_XS.pyth"
    assert re.fullmatch(
        rf"cannot download {re.escape(url)}: .+; check the network connection, or download "
        r"the file another way and pass its path with --weights PATH, or try the pipeline "
        r"with random weights: --weights none",
        text,
    ), text
    assert not isolated_cache.exists() or not any(isolated_cache.iterdir())


def test_downloaded_garbage_says_how_to_retry(file_server, isolated_cache):
    file_server.files["/X3D_XS.pyth"] = b"<html>not here</html>"
    with pytest.raises(models.WeightsError) as info:
        models.create("x3d_xs", weights=f"{file_server.url}/X3D_XS.pyth")
    (cached,) = isolated_cache.iterdir()
    assert f"delete {cached}" in one_line(info.value)


def test_published_sha256_is_checked(file_server, ptv_file, isolated_cache):
    from models import _weights

    body = ptv_file.read_bytes()
    good = hashlib.sha256(body).hexdigest()[:8]
    file_server.files["/zoo/good.pth"] = body
    path = _weights.download(f"{file_server.url}/zoo/good.pth", sha256_prefix=good)
    assert path.read_bytes() == body
    file_server.files["/zoo/substituted.pth"] = body
    with pytest.raises(models.WeightsError, match="not the published file") as exc:
        _weights.download(f"{file_server.url}/zoo/substituted.pth", sha256_prefix="00000000")
    one_line(exc.value)
    assert not [p for p in isolated_cache.iterdir() if "substituted" in p.name]  # nothing kept
    assert _weights.published_sha256("mvit_v1_b-dbeb1030.pth") == "dbeb1030"
    assert _weights.published_sha256("X3D_XS.pyth") is None
