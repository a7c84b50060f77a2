"""What a run shows and leaves behind: a progress line, metrics.jsonl, TensorBoard events, a curves PNG.

Only the lead process (process 0) writes files; every process may print. Files are written synchronously,
one whole record at a time, through cnnjax.workdir (local folders and gs:// alike), so a failed write is an
error of the run's own thread, reported once, not a background thread's traceback.
"""

import contextlib
import csv
import json
import math
import socket
import struct
import sys
import time

from etils import epath

from cnnjax import workdir as workdir_lib


class EventFile:
  """A TensorBoard event file of scalars: TensorBoard's own protocol buffers, framed as TFRecords (no TensorFlow;
  nothing that imports PyTorch where it is installed, as tensorboardX does, seconds per run)."""

  def __init__(self, folder, resumed_at: int = 0):
    from tensorboard.compat.proto import event_pb2

    self._event = event_pb2.Event
    folder = epath.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    self.path = folder / f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}"
    self._file = workdir_lib.Appender(self.path)
    first = [self._event(wall_time=time.time(), file_version="brain.Event:2")]
    if resumed_at:  # TensorBoard drops what earlier event files hold past this step: a lost future of the run
      restart = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
      first.append(self._event(wall_time=time.time(), step=resumed_at + 1, session_log=restart))
    self._file.append(b"".join(map(self._record, first)))

  def scalars(self, step: int, values: dict):
    from tensorboard.compat.proto.summary_pb2 import Summary

    now = time.time()
    summaries = [Summary(value=[Summary.Value(tag=k, simple_value=float(v))]) for k, v in values.items()]
    self._file.append(b"".join(self._record(self._event(wall_time=now, step=step, summary=s)) for s in summaries))

  @staticmethod
  def _record(event) -> bytes:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


class Writer:
  """metrics.jsonl (one JSON object per line) and a TensorBoard event file, in the workdir."""

  def __init__(self, workdir: str, is_lead: bool = True, resumed_at: int = 0):
    """`resumed_at`: the step a resumed run restarts from; what was logged after it (by a run that went on past
    its last checkpoint before it was stopped) is dropped, so every step appears once."""
    self.workdir, self.shown = workdir_lib.resolve(workdir), workdir.rstrip("/")
    self.is_lead = is_lead
    self.path = self.workdir / "metrics.jsonl"
    if is_lead:
      self.workdir.mkdir(parents=True, exist_ok=True)
      kept = [line for line in read_metrics(self.path) if line["step"] <= resumed_at]
      workdir_lib.write_text(self.path, "".join(json.dumps(line) + "\n" for line in kept))
      self._lines = workdir_lib.Appender(self.path)
      self._events = EventFile(self.workdir / "tensorboard", resumed_at)

  def write(self, line: dict):
    if not self.is_lead:
      return
    self._lines.append((json.dumps(line) + "\n").encode())
    self._events.scalars(line["step"], {k: v for k, v in line.items() if k not in ("step", "epoch")})

  def note(self, text: str):
    if self.is_lead:
      print(text, flush=True)

  def finish(self, summary: dict):
    """Write the curves PNG and summary.json, and print the summary."""
    if self.is_lead:
      workdir_lib.write_text(self.workdir / "summary.json", json.dumps(summary, indent=1))
      plot_curves(self.path, self.workdir / "curves.png")
    parts = [f"final step {summary['final_step']}"]
    if "eval_accuracy" in summary:
      parts.append(f"test accuracy {summary['eval_accuracy']:.2%}")
    if "eval_top5" in summary:
      parts.append(f"top-5 {summary['eval_top5']:.2%}")
    parts.append(f"wall time {summary['wall_time_s']:.0f}s")
    if not self.is_lead:
      return
    print("done: " + ", ".join(parts), flush=True)
    print(f"wrote {self.shown}/: metrics.jsonl, tensorboard/, curves.png, summary.json, checkpoints/", flush=True)


def read_metrics(path) -> list[dict]:
  """The lines of a metrics.jsonl; a last line cut short (a process killed while writing it) is left out."""
  path = epath.Path(path)
  lines = []
  for text in path.read_text().splitlines() if path.exists() else []:
    try:
      lines.append(json.loads(text))
    except ValueError:
      continue
  return lines


@contextlib.contextmanager
def figure(path, *args, **kwargs):
  """The axes of Figure.subplots(*args, **kwargs) (figsize goes to the Figure), drawn off-screen and saved to `path`
  when the block ends (PNG, or what its suffix names: .svg, .pdf)."""
  # not pyplot: no global figure state, and half a second less to import
  from matplotlib.figure import Figure

  fig = Figure(figsize=kwargs.pop("figsize", None))
  axes = fig.subplots(*args, **kwargs)
  yield axes
  fig.tight_layout()
  path = epath.Path(path)
  with path.open("wb") as f:  # through epath: a gs:// workdir too
    fig.savefig(f, format=path.suffix[1:] or "png", dpi=100)


def plot_series(ax, x, y, *fmt, **style):
  """ax.plot, with a marker on a series of one point (which a line alone does not show)."""
  if len(x) == 1 and not fmt and "marker" not in style:
    style = {"marker": "o", "markersize": 4, **style}
  return ax.plot(x, y, *fmt, **style)


def plot_curves(metrics_path, png_path):
  """Loss and error (1 - accuracy) against step, training and test, from metrics.jsonl."""
  lines = read_metrics(metrics_path)
  train = [line for line in lines if "train_loss" in line]
  test = [line for line in lines if "eval_loss" in line]
  with figure(png_path, 1, 2, figsize=(10, 4)) as (loss_ax, err_ax):
    for rows, prefix, style in ((train, "train", "-" if len(train) > 1 else "o"), (test, "eval", "o-")):
      if rows:
        steps = [r["step"] for r in rows]
        label = "train" if prefix == "train" else "test"
        plot_series(loss_ax, steps, [r[f"{prefix}_loss"] for r in rows], style, label=label)
        plot_series(err_ax, steps, [100 * (1 - r[f"{prefix}_accuracy"]) for r in rows], style, label=label)
    loss_ax.set(xlabel="step", ylabel="loss", title="loss")
    err_ax.set(xlabel="step", ylabel="error (%)", title="error")
    for ax in (loss_ax, err_ax):
      ax.grid(alpha=0.3)
      ax.legend()


class Progress:
  """One line of step, epoch, loss, accuracy, img/s and ETA: redrawn in place on a terminal, else printed per log."""

  def __init__(
    self, total_steps: int, steps_per_epoch: int, batch_size: int, first_step: int = 0, stream=None, quiet: bool = False
  ):
    self.total, self.steps_per_epoch, self.batch_size, self.quiet = total_steps, steps_per_epoch, batch_size, quiet
    self.stream = stream or sys.stdout
    self.tty = self.stream.isatty()
    self._last_step, self._last_time = first_step, time.time()
    self._rate = None

  def throughput(self, step: int) -> float:
    """Images per second since the previous call (the first interval includes compilation)."""
    now = time.time()
    rate = (step - self._last_step) * self.batch_size / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time, self._rate = step, now, rate
    return rate

  def update(self, step: int, line: dict):
    eta = (self.total - step) * self.batch_size / self._rate if self._rate else math.nan
    text = (
      f"step {step}/{self.total}  epoch {step / self.steps_per_epoch:.2f}  loss {line['train_loss']:.4f}  "
      f"acc {line['train_accuracy']:.2%}  {line['img_per_s']:.0f} img/s  ETA {_duration(eta)}"
    )
    self._print(text)

  def eval(self, step: int, result: dict):
    text = f"eval at step {step}: loss {result['eval_loss']:.4f}  accuracy {result['eval_accuracy']:.2%}"
    if "eval_top5" in result:
      text += f"  top-5 {result['eval_top5']:.2%}"
    self._print(text, keep=True)

  def _print(self, text: str, keep: bool = False):
    if self.quiet:
      return
    if self.tty:
      self.stream.write("\r\033[K" + text + ("\n" if keep else ""))
    else:
      self.stream.write(text + "\n")
    self.stream.flush()

  def close(self):
    if self.tty and not self.quiet:
      self.stream.write("\n")
      self.stream.flush()


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def final_errors(run_dir) -> dict:
  """A finished run's training error over the last logged interval and its last test error, in percent."""
  lines = read_metrics(epath.Path(run_dir) / "metrics.jsonl")
  last_train = [line for line in lines if "train_accuracy" in line][-1]
  last_eval = [line for line in lines if "eval_accuracy" in line][-1]
  return {
    "step": last_eval["step"],
    "train_error": 100 * (1 - last_train["train_accuracy"]),
    "test_error": 100 * (1 - last_eval["eval_accuracy"]),
  }


def write_csv(path, rows: list[dict]) -> None:
  """A results table, one row per run (local or gs://)."""
  with epath.Path(path).open("w") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
