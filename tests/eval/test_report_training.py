"""The report's training curves: SFT's held-out loss (sft.eval_every) drawn beside its training loss."""

import json

from showwork.bus import Bus
from showwork.eval import report


def sft_rows(eval_every: int, steps: int) -> list[dict]:
    rows = []
    for step in range(1, steps + 1):
        row = {"step": step, "loss": 2.0 / step, "learning_rate": 1e-4}
        if step % eval_every == 0:
            row["eval_loss"] = 2.5 / step + 0.1
        rows.append(row)
    return rows


def test_a_report_draws_sfts_held_out_loss_at_the_steps_it_was_measured(tmp_path, monkeypatch):
    bus = Bus(str(tmp_path / "run"))
    rows = sft_rows(eval_every=3, steps=10)
    bus.write_text("sft/metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    curves = report.training_curves(bus)  # no TensorBoard files: read from metrics.jsonl
    assert [r["step"] for r in curves["sft"]] == list(range(1, 11))

    drawn = []
    monkeypatch.setattr(report, "_png", lambda fig: drawn.append(fig) or b"png")
    assert report.plot_training(curves) == b"png"
    (ax,) = drawn[0].axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"loss", "held-out loss"}
    held = lines["held-out loss"]
    assert list(held.get_xdata()) == [3, 6, 9]
    assert list(held.get_ydata()) == [r["eval_loss"] for r in rows if "eval_loss" in r]


def test_without_eval_every_the_sft_panel_has_its_training_loss_only(tmp_path, monkeypatch):
    bus = Bus(str(tmp_path / "run"))
    bus.write_text("sft/metrics.jsonl", "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2)))
    drawn = []
    monkeypatch.setattr(report, "_png", lambda fig: drawn.append(fig) or b"png")
    report.plot_training(report.training_curves(bus))
    assert [line.get_label() for line in drawn[0].axes[0].get_lines()] == ["loss"]
