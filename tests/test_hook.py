"""The training hook (breedkit.debugger): smdebug output written only at save steps, with
nothing attached to the model in between and autocast kept."""

from __future__ import annotations

import torch
import torch.nn as nn

from breedkit.debugger import create_hook
from breedkit.training import evaluate, train_one_epoch


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.fc = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


def tiny_model():
    return Tiny()


def loader(batches=6):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g))
            for _ in range(batches)]


class Sampler(list):
    def set_epoch(self, epoch):
        pass


def attached(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hook_attaches_work_only_on_save_steps_and_keeps_autocast(tmp_path):
    model, criterion = tiny_model(), nn.CrossEntropyLoss()
    hook = create_hook(str(tmp_path / "hook"), save_interval=3)
    hook.register(model, criterion)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = []

    def watch(module, args):  # runs before each forward: what is attached to the model then
        seen.append(attached(model) - 1)  # less this watcher

    model.register_forward_pre_hook(watch)
    train_one_epoch(model, loader(), optimizer, criterion, torch.device("cpu"),
                    amp_dtype=torch.bfloat16, hook=hook)
    evaluate(model, loader(2), criterion, torch.device("cpu"), amp_dtype=torch.bfloat16,
             hook=hook)
    hook.close()
    # smdebug numbers steps from 1; save_interval 3 saves training steps 3 and 6 (mode steps)
    # and evaluation never (2 steps); nothing attached on the other steps
    saving = [i for i, n in enumerate(seen) if n > 0]
    assert len(seen) == 8 and hook.saves == len(saving) >= 1
    assert all(n == 0 for i, n in enumerate(seen) if i not in saving)
    assert attached(model) == 1  # only the test's watcher is left

    from smdebug.trials import create_trial

    trial = create_trial(str(tmp_path / "hook"))
    relu = trial.tensor_names(collection="relu_output")
    assert relu, trial.tensor_names()
    step = trial.tensor(relu[0]).steps()[0]
    assert trial.tensor(relu[0]).reduction_value(step, "min") >= 0  # a ReLU's output
    grads = trial.tensor_names(collection="gradients")
    assert grads and trial.tensor(grads[0]).reduction_value(step, "l2") > 0
    assert len(trial.tensor(trial.tensor_names(collection="losses")[0]).steps()) == hook.saves


def test_hook_unscales_fp16_gradients(tmp_path):
    """Gradients saved under loss scaling are divided by the scale first."""

    class Scaler:
        def get_scale(self):
            return 1024.0

    results = {}
    for name, scaler, factor in (("plain", None, 1.0), ("scaled", Scaler(), 1024.0)):
        torch.manual_seed(0)
        model, criterion = tiny_model(), nn.CrossEntropyLoss()
        hook = create_hook(str(tmp_path / name), save_interval=1)
        hook.register(model, criterion)
        hook.train_mode()
        images, labels = loader(1)[0]
        hook.begin_step()
        (criterion(model(images), labels) * factor).backward()
        hook.after_backward(scaler)
        hook.close()
        from smdebug.trials import create_trial

        trial = create_trial(str(tmp_path / name))
        grad = trial.tensor(sorted(trial.tensor_names(collection="gradients"))[0])
        results[name] = grad.reduction_value(grad.steps()[0], "l2")
    assert abs(results["scaled"] - results["plain"]) < 1e-4 * results["plain"]
