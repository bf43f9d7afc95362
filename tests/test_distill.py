"""Knowledge distillation: the loss, and training from teachers."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from smoothblock import Config
from smoothblock.cli import main
from smoothblock.distill import distillation_loss, teacher_probs
from smoothblock.train import train


def test_the_loss_is_zero_only_where_the_model_matches_the_teachers():
    torch.manual_seed(0)
    logits = torch.randn(8, 10)
    for temperature in (1.0, 4.0):
        same = F.softmax(logits / temperature, dim=1)
        assert distillation_loss(logits, same, temperature).abs() < 1e-6
        other = F.softmax(torch.randn(8, 10) / temperature, dim=1)
        assert distillation_loss(logits, other, temperature) > 1e-3


def test_the_gradient_moves_the_model_towards_the_teachers():
    torch.manual_seed(0)
    logits = torch.randn(4, 10, requires_grad=True)
    target = F.softmax(torch.randn(4, 10), dim=1)
    before = distillation_loss(logits, target, 4.0)
    before.backward()
    after = distillation_loss((logits - 0.5 * logits.grad).detach(), target, 4.0)
    assert after < before


def test_several_teachers_are_their_averaged_probabilities():
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    a, b = torch.nn.Linear(3 * 32 * 32, 10), torch.nn.Linear(3 * 32 * 32, 10)
    teachers = [torch.nn.Sequential(torch.nn.Flatten(), m) for m in (a, b)]
    expected = (F.softmax(teachers[0](images) / 2, 1) + F.softmax(teachers[1](images) / 2, 1)) / 2
    assert torch.allclose(teacher_probs(teachers, images, 2.0), expected, atol=1e-6)


def test_training_from_a_teacher_changes_the_model_and_resumes(tiny_config, tmp_path):
    teacher = train(tiny_config.replace(method="none", epochs=1, out_dir=str(tmp_path / "teacher")), progress=False)
    plain = train(tiny_config.replace(out_dir=str(tmp_path / "plain")), progress=False)
    cfg = tiny_config.replace(out_dir=str(tmp_path / "student"), teachers=[str(teacher.weights_path)])
    student = train(cfg, progress=False)
    assert Config.load(tmp_path / "student" / "config.yaml").teachers == (str(teacher.weights_path),)
    changed = [not torch.equal(v, student.model.state_dict()[k]) for k, v in plain.model.state_dict().items()]
    assert any(changed)
    lengthened = train(cfg.replace(epochs=3), resume=True, progress=False)
    assert [h["epoch"] for h in lengthened.history] == [1, 2, 3]


def test_teachers_through_the_cli(tmp_path, image_folder, tiny_config):
    teacher = train(tiny_config.replace(method="none", epochs=1, out_dir=str(tmp_path / "teacher")), progress=False)
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {image_folder}\nval_size: 20\nepochs: 1\nbatch_size: 16\nbf16: false\n"
                      f"out_dir: {tmp_path / 'run'}\n")
    argv = ["train", "--config", str(config), "--quiet", "--teachers", str(teacher.weights_path),
            "--distill_weight", "0.5"]
    assert main(argv) == 0
    saved = Config.load(tmp_path / "run" / "config.yaml")
    assert saved.teachers == (str(teacher.weights_path),) and saved.distill_weight == 0.5


def test_teacher_ensemble_scores_each_model_and_their_average_on_validation(tmp_path, image_folder, tiny_config,
                                                                           capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from teacher_ensemble import main as ensemble_main

    paths = [str(train(tiny_config.replace(method="none", epochs=1, seed=seed, out_dir=str(tmp_path / f"t{seed}")),
                       progress=False).weights_path) for seed in (0, 1)]
    assert ensemble_main([*paths, "--data", str(image_folder), "--val_size", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == [paths[0], paths[1], f"{paths[0]} + {paths[1]}"]
    assert all(0 <= float(line.split("%")[0]) <= 100 for line in lines)
    assert ensemble_main([str(tmp_path / "nope.safetensors"), "--data", str(image_folder), "--val_size", "20"]) == 2
    assert "neither a shipped model" in capsys.readouterr().err
