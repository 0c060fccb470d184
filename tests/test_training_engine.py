"""run_steps, the optimisation loop unpaired training, BadDist and CleanCLIP share: what one step does, in order."""

import math

import pytest
import torch

from artmed.models.medclip import LOGIT_SCALE_MAX
from artmed.training import NonFiniteLossError, clamp_logit_scale, run_steps, warmup_cosine


def test_a_step_minimises_clips_schedules_and_records():
    """Gradient descent on (w - 3)^2 with lr 0.1: each step's terms are recorded before the update, the gradient is
    clipped to norm 1 first (|2(w - 3)| = 6 at w = 0), the schedule sets the learning rate of each step."""
    w = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([w], lr=0.1)
    scheduler = warmup_cosine(optimizer, 4, warmup=0.5)
    calls = []

    def objective(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        loss = ((w - 3) ** 2).sum()
        return loss, torch.stack([loss, w[0]])

    terms, lrs = run_steps(
        objective,
        optimizer,
        4,
        where="toy",
        scheduler=scheduler,
        clip=[w],
        max_grad_norm=1.0,
        after_step=lambda: calls.append(w.detach().item()),
    )
    assert terms.shape == (4, 2) and not terms.requires_grad
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.1 * 0.5 * (1 + math.cos(math.pi / 2))])  # warm-up, then cosine
    expected_w = [0.0]
    for lr in lrs:  # every gradient has norm > 1 here, so each step moves w by exactly lr
        expected_w.append(expected_w[-1] + lr)
    assert terms[:, 1].tolist() == pytest.approx(expected_w[:4])
    assert calls == pytest.approx(expected_w[1:])


def test_without_clipping_the_full_gradient_is_used():
    w = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([w], lr=0.1)
    run_steps(lambda step: (((w - 3) ** 2).sum(), w.detach().clone()), optimizer, 1, where="toy")
    assert w.detach().item() == pytest.approx(0.6)


def test_a_non_finite_loss_names_the_loop_and_step():
    w = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([w], lr=0.1)

    def objective(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        loss = w.sum() * (float("nan") if step == 2 else 1.0)
        return loss, loss.reshape(1)

    with pytest.raises(NonFiniteLossError, match="toy loop: the loss is nan at step 3"):
        run_steps(objective, optimizer, 5, where="toy loop")
    assert w.detach().item() == pytest.approx(0.8)  # two updates, none from the NaN step


def test_clamp_logit_scale_keeps_the_released_range():
    model = torch.nn.Module()
    model.logit_scale = torch.nn.Parameter(torch.tensor(9.0))
    clamp_logit_scale(model)()
    assert model.logit_scale.detach().item() == pytest.approx(LOGIT_SCALE_MAX)
    model.logit_scale.data.fill_(-1.0)
    clamp_logit_scale(model)()
    assert model.logit_scale.detach().item() == 0.0
