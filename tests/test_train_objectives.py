"""train: one objective per generator family; checkpoints of the layout written before the split
(every family with a discriminator and its optimiser) still resume exactly."""

import numpy as np
import pytest
import torch
from conftest import save
from PIL import Image

from colorize_batch.config import PipelineConfig
from colorize_batch.examples import colour_photo
from colorize_batch.model import build_discriminator
from colorize_batch.objectives import BinClassObjective, Pix2PixObjective
from colorize_batch.train import CHECKPOINT, Trainer, TrainingError
from colorize_batch.weights import load_weights

# The checkpoint layout of the trainer before the objectives were split, for every family.
OLD_KEYS = {"step", "generator", "discriminator", "opt_g", "opt_d", "scaler", "torch_rng", "config"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    base = colour_photo("astronaut")
    for i in range(8):
        y, x = rng.integers(0, 512 - 96, 2)
        save(root / f"{i}.jpg", Image.fromarray(np.ascontiguousarray(base[y : y + 96, x : x + 96])))
    return root


def _trainer(run, photos, preset, steps):
    crop = 32 if preset == "tiny" else 64
    config = PipelineConfig.model_validate({"model": {"size": crop}, "train": {
        "preset": preset, "pretrained": False, "crop": crop, "batch_size": 4, "steps": steps, "l1_steps": 2,
        "checkpoint_every": 100, "val_every": 100000, "log_every": 1, "workers": 0, "min_chroma": 1.0}})
    return Trainer(config, run, [photos], torch.device("cpu"))


def _to_old_layout(trainer):
    """Rewrite the run's checkpoint as the trainer before the split wrote it: an effunet run carried
    a PatchGAN and its Adam state too (built from the run's disc settings, never stepped)."""
    path = trainer.out_dir / CHECKPOINT
    state = torch.load(path, weights_only=True)
    if "discriminator" not in state:
        cfg = trainer.config.train
        disc = build_discriminator(cfg.disc_layers, cfg.disc_channels)
        state["discriminator"] = disc.state_dict()
        state["opt_d"] = torch.optim.Adam(disc.parameters(), lr=cfg.gan_lr, betas=(cfg.beta1, cfg.beta2)).state_dict()
    assert set(state) == OLD_KEYS
    torch.save(state, path)


@pytest.mark.parametrize(("preset", "objective"), [("tiny", Pix2PixObjective), ("effnet-lite0", BinClassObjective)])
def test_old_layout_checkpoint_resumes_exactly(tmp_path, photos, preset, objective):
    whole = _trainer(tmp_path / "whole", photos, preset, 4)
    assert isinstance(whole.objective, objective)
    whole.fit()
    half = _trainer(tmp_path / "half", photos, preset, 2)
    half.fit()
    _to_old_layout(half)
    resumed = _trainer(tmp_path / "half", photos, preset, 4)
    resumed.load_checkpoint()
    assert resumed.step == 2
    resumed.fit()
    a, b = whole.generator.state_dict(), resumed.generator.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert any(not torch.equal(a[k], half.generator.state_dict()[k]) for k in a)  # steps 3-4 did train


def test_only_the_pix2pix_family_builds_and_checkpoints_a_discriminator(tmp_path, photos):
    effunet = _trainer(tmp_path / "e", photos, "effnet-lite0", 1)
    assert not hasattr(effunet.objective, "discriminator")
    effunet.save_checkpoint()
    assert not {"discriminator", "opt_d"} & set(torch.load(effunet.out_dir / CHECKPOINT, weights_only=True))
    unet = _trainer(tmp_path / "u", photos, "tiny", 1)
    unet.save_checkpoint()
    state = torch.load(unet.out_dir / CHECKPOINT, weights_only=True)
    assert set(state) == OLD_KEYS
    del state["opt_d"]
    torch.save(state, unet.out_dir / CHECKPOINT)
    with pytest.raises(TrainingError, match="does not fit this run's model and optimiser"):
        _trainer(tmp_path / "u", photos, "tiny", 1).load_checkpoint()


def test_the_gan_joins_after_the_warm_up_only_for_pix2pix(tmp_path, photos):
    unet = _trainer(tmp_path / "u", photos, "tiny", 3)
    logged = []
    unet.fit(progress=lambda step, total, losses: logged.append(set(losses)))
    assert logged[1] == {"l1"} and logged[2] == {"l1", "d", "g_gan"}
    effunet = _trainer(tmp_path / "e", photos, "effnet-lite0", 3)
    logged.clear()
    effunet.fit(progress=lambda step, total, losses: logged.append(set(losses)))
    assert logged == [{"ce", "l1"}] * 3
    assert "rebalanced CE" in load_weights(effunet.export())[1].provenance["objective"]
    assert "GAN after 2" in load_weights(unet.export())[1].provenance["objective"]
