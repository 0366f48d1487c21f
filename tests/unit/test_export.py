"""Taking the trained encoder into other code: torchvision's names and counts for the ResNets, and a round
trip from a real checkpoint directory through the export command to bit-identical features."""

from __future__ import annotations

import json

import pytest
import torch

from adadim_dist.config import load_config
from adadim_dist.models import build_model, load_encoder
from adadim_dist.models.backbones import build_backbone
from adadim_dist.models.export import encoder_state, torchvision_name
from adadim_dist.training.checkpoint import save_state

# torchvision's published sizes without the classifier (torchvision.models.resnet18/50, fc excluded).
PUBLISHED = {"resnet18": 11_176_512, "resnet50": 23_508_032}


def torchvision_state_names(backbone: str) -> set[str]:
    """torchvision's ResNet state-dict names without ``fc``, written out from its architecture."""
    bottleneck = backbone == "resnet50"
    layers = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}[backbone]

    def bn(prefix):
        return {f"{prefix}.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}

    names = {"conv1.weight"} | bn("bn1")
    for layer, blocks in enumerate(layers, 1):
        for block in range(blocks):
            prefix = f"layer{layer}.{block}"
            for conv in range(1, 4 if bottleneck else 3):
                names |= {f"{prefix}.conv{conv}.weight"} | bn(f"{prefix}.bn{conv}")
            if block == 0 and (layer > 1 or bottleneck):
                names |= {f"{prefix}.downsample.0.weight"} | bn(f"{prefix}.downsample.1")
    return names


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_resnet_export_has_torchvisions_names_shapes_and_count(backbone, tmp_path):
    from safetensors.torch import load_file

    from adadim_dist.models.export import export_encoder

    encoder = build_backbone(backbone, cifar_stem=False)
    counts = export_encoder(encoder.state_dict(), {"backbone": backbone, "cifar_stem": False}, tmp_path / "e.st")
    exported = load_file(str(tmp_path / "e.st"))
    assert set(exported) == torchvision_state_names(backbone)
    assert counts["parameters"] == PUBLISHED[backbone]
    assert exported["conv1.weight"].shape == (64, 3, 7, 7)
    if backbone == "resnet18":
        assert exported["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
        assert exported["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    else:
        assert exported["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
        assert exported["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
        assert exported["layer3.5.bn2.running_var"].shape == (256,)


def test_names_map_block_by_block():
    assert torchvision_name("stem.0.weight", "resnet18") == "conv1.weight"
    assert torchvision_name("stages.2.shortcut.1.running_mean", "resnet18") == "layer2.0.downsample.1.running_mean"
    assert torchvision_name("stages.7.conv2.weight", "resnet18") == "layer4.1.conv2.weight"
    assert torchvision_name("stages.9.bn3.bias", "resnet50") == "layer3.2.bn3.bias"


def _checkpoint(tmp_path, overrides):
    """A DDP checkpoint directory as a job writes it: model.pt (the whole model) and state.pt (its config)."""
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():  # BatchNorm statistics that are not the defaults, so they must travel too
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    directory = tmp_path / "epoch_0003"
    directory.mkdir()
    torch.save(model.state_dict(), directory / "model.pt")
    save_state(directory, {"epoch": 3, "config": cfg.model_dump(mode="json")})
    return model, directory


@pytest.mark.parametrize("overrides", [
    ["model.backbone=resnet18"],
    ["model.small_cnn_width=8", "model.small_cnn_downsample=stride", "model.small_cnn_pool=2"],
])
def test_export_command_round_trip_gives_bit_identical_features(tmp_path, overrides, capsys):
    from adadim_dist.export import main

    model, directory = _checkpoint(tmp_path, overrides)
    out = tmp_path / "encoder.safetensors"
    assert main(["--checkpoint", str(directory), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["parameters"] == sum(p.numel() for p in model.encoder.parameters())
    loaded = load_encoder(out)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images), model.encoder.eval()(images))
    assert loaded.state_dict().keys() == encoder_state(model.state_dict()).keys()


def test_load_encoder_of_a_file_that_is_not_an_export_is_one_error(tmp_path):
    from adadim_dist.models import load_encoder
    from adadim_dist.models.export import ExportError

    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00garbage")
    with pytest.raises(ExportError, match=r"bad\.safetensors: not a safetensors file"):
        load_encoder(tmp_path / "bad.safetensors")


def test_export_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    from adadim_dist.export import main

    out = tmp_path / "encoder.safetensors"
    assert main(["--checkpoint", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"adadim_dist.export: error: --checkpoint: {tmp_path / 'missing'} is not a directory"
    (tmp_path / "empty").mkdir()
    assert main(["--checkpoint", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "has no state.pt" in capsys.readouterr().err and not out.exists()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "state.pt").write_bytes(b"\x00garbage")
    assert main(["--checkpoint", str(tmp_path / "corrupt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "state.pt cannot be read: not a file torch.save wrote" in err and not out.exists()
    _, directory = _checkpoint(tmp_path, ["model.small_cnn_width=4"])
    out.write_text("keep me")
    assert main(["--checkpoint", str(directory), "--out", str(out)]) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err and out.read_text() == "keep me"
