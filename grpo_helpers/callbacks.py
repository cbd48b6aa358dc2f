"""The Trainer callbacks: live metrics (metrics.csv and the curves PNG) and the run file in every checkpoint.

Under accelerate launch only the main process (state.is_world_process_zero) writes them."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any, Mapping

from . import paths
from .checkpoints import CHECKPOINT_PREFIX, write_run_file
from .plotting import metrics_table, plot_training_curves
from .profiles import Profile

METRICS_FILE = "metrics.csv"
CURVES_FILE = "reward_curves.png"


def read_metrics(path: str | Path) -> "Any":
    """metrics.csv as a DataFrame of long rows: step, epoch, name, value, wall_time."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=["step", "epoch", "name", "value", "wall_time"])
    return pd.read_csv(path)


def append_metric_rows(path: Path, step: int, epoch: float | None, values: Mapping[str, float]) -> None:
    """Append step, epoch, name, value, wall_time rows to metrics.csv (a header first in a new file)."""
    new_file = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new_file:
            writer.writerow(["step", "epoch", "name", "value", "wall_time"])
        now = round(time.time(), 3)
        writer.writerows([step, epoch, name, value, now] for name, value in values.items())


def _make_callback_class() -> type:
    from transformers import TrainerCallback

    class LiveMetricsCallback(TrainerCallback):
        """Append every logged metric to metrics.csv and redraw the reward curves while training."""

        def __init__(self, metrics_path: Path, png_path: Path, redraw_every_s: float = 15.0, window: int = 5):
            self.metrics_path, self.png_path = Path(metrics_path), Path(png_path)
            self.redraw_every_s, self.window = redraw_every_s, window
            self._last_draw = 0.0
            self._display = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Start the redraw clock: the first curves are drawn once there is a trend."""
            self._last_draw = time.monotonic()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            """Append the logged numbers to metrics.csv (main process) and redraw when redraw_every_s has passed."""
            numbers = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            if not numbers or not state.is_world_process_zero:
                return
            append_metric_rows(self.metrics_path, state.global_step, state.epoch, numbers)
            if time.monotonic() - self._last_draw >= self.redraw_every_s:
                self.redraw()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Draw the final curves (main process)."""
            if state.is_world_process_zero:
                self.redraw()

        def redraw(self) -> None:
            """Draw the curves from metrics.csv: inline in a notebook, and always to the PNG."""
            import matplotlib.pyplot as plt

            self._last_draw = time.monotonic()
            table = metrics_table(read_metrics(self.metrics_path))
            if "reward" not in table.columns:
                return
            fig = plot_training_curves(table, window=self.window)
            fig.savefig(self.png_path, dpi=110)
            if _in_notebook():
                from IPython.display import display

                if self._display is None:
                    self._display = display(fig, display_id=True)
                else:
                    self._display.update(fig)
            plt.close(fig)

    return LiveMetricsCallback


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ in ("ZMQInteractiveShell", "Shell")


def live_metrics_callback(profile: Profile, redraw_every_s: float = 15.0) -> Any:
    """The callback writing <artifacts>/<profile>/metrics.csv and reward_curves.png."""
    folder = paths.profile_dir(profile.name)
    return _make_callback_class()(folder / METRICS_FILE, folder / CURVES_FILE, redraw_every_s=redraw_every_s)


def _make_run_callback_class() -> type:
    from transformers import TrainerCallback

    class RunCallback(TrainerCallback):
        """Write run.json into every checkpoint; stop, with a checkpoint, once global_step reaches `stop_after`."""

        def __init__(self, run: dict[str, Any], stop_after: int | None = None):
            self.run, self.stop_after = run, stop_after
            self.began = False  # True once the Trainer has loaded the checkpoint and starts stepping
            self.progress: list[Any] = []  # the trainer's callbacks, for the notebook progress bar fix below

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Mark that the checkpoint loaded and stepping starts."""
            self.began = True

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Drop the progress bar's ETA when the run stopped before max_steps (see below)."""
            # transformers 4.56's notebook progress bar divides by None at the end of a run stopped before
            # max_steps after 2+ steps (a stop_after run in Colab); without an ETA it draws the bar plainly.
            if state.global_step < state.max_steps:
                for tracker in (getattr(cb, "training_tracker", None) for cb in self.progress):
                    if hasattr(tracker, "predicted_remaining"):
                        tracker.predicted_remaining = None

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Stop (saving) at stop_after; write run.json before the Trainer writes a checkpoint."""
            if self.stop_after is not None and state.global_step >= self.stop_after:
                control.should_save = control.should_training_stop = True
            if control.should_save:  # before the Trainer writes the checkpoint: no window without run.json
                self._write(args, state)

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Write run.json into the checkpoint just saved."""
            self._write(args, state)

        def _write(self, args: Any, state: Any) -> None:
            if not state.is_world_process_zero:  # one writer; the Trainer saves the checkpoint from there too
                return
            write_run_file(Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}", self.run,
                           state.global_step)

    return RunCallback


def run_callback(run: dict[str, Any], stop_after: int | None = None) -> Any:
    """The callback that writes run.json into each checkpoint and stops (checkpointed) at `stop_after`."""
    return _make_run_callback_class()(run, stop_after)
