"""Profiles of a step window: a `jax.profiler` trace of steps N..N+K-1 and what it shows.

`ProfileWindow` starts the trace before step N and stops it after step N+K-1, writing
`LOGDIR/plugins/profile/<run>/<host>.xplane.pb` (TensorBoard's profile plugin and XProf open it
when LOGDIR is a run's `tensorboard/`). `summarize` reads that file with jaxlib's own reader
(`jax.profiler.ProfileData`, no TensorFlow) and adds up the XLA ops' device self-time:

- an XLA op is an event carrying an `hlo_op` stat (XLA:CPU thunks on host threads, GPU kernels on
  device streams) or an event of a device plane's "XLA Ops" line (TPU); device planes are used
  when the trace has any, the host's otherwise;
- self-time is an op's duration less the ops nested inside it on the same line (a while loop's
  body), summed over the window and averaged over the devices that ran ops;
- each op falls in one group of `GROUPS`, decided from the compiled HLO text when the caller
  gives it (`classify_hlo`: collectives by opcode; attention by the op's `op_name` scope or a
  fused attention kernel; matmul when the op is or fuses a dot or convolution; elementwise for
  other fusions and arithmetic) and from the op's name otherwise;
- the step time is the mean length of the window's step annotations
  (`jax.profiler.StepTraceAnnotation`), each closed after the step's results were ready.
"""

import contextlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import jax

GROUPS = ("matmul", "attention", "collective", "elementwise", "other")
TOP_OPS = 10  # ops listed in the summary and the table
ATTENTION_SCOPES = ("attn",)  # module names whose ops count as attention (the model's Block)

_COLLECTIVES = (
    "all-reduce", "all-gather", "reduce-scatter", "all-to-all", "ragged-all-to-all",
    "collective-permute", "collective-broadcast", "send", "recv",
)
_MATMUL_OPCODES = ("dot", "convolution", "ragged-dot")
_ATTENTION_KERNELS = ("attention", "fmha", "flash", "splash", "mha")
_MATMUL_KERNELS = ("gemm", "matmul", "cublas", "dot", "conv", "ynn_fusion")
_ELEMENTWISE = (
    "fusion", "add", "subtract", "multiply", "divide", "exponential", "log", "tanh", "logistic",
    "maximum", "minimum", "select", "compare", "convert", "negate", "rsqrt", "sqrt", "power",
    "abs", "reduce", "broadcast", "clamp", "and", "or", "not", "xor", "sign", "erf", "map",
    "exponential-minus-one", "log-plus-one", "sine", "cosine", "floor", "ceil", "round",
)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[^\s=%]+)\s*=\s*(?P<rest>.*)$")
_OPCODE = re.compile(r"(?<![\w\-.])([a-z][a-z0-9\-]*)\(")
_CALLS = re.compile(r"\b(?:calls|to_apply|body|called_computations)=\{?%?([\w.\-]+)")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")


def _base_opcode(opcode: str) -> str:
  for suffix in ("-start", "-done", "-update"):
    if opcode.endswith(suffix):
      return opcode[: -len(suffix)]
  return opcode


def _in_scope(op_name: str, scopes: Iterable[str]) -> bool:
  parts = set(op_name.split("/"))
  return any(scope in parts for scope in scopes)


def _parse_module(text: str) -> tuple[dict[str, tuple], dict[str, list[str]]]:
  """An HLO module's text as {instruction: (opcode, op_name, custom-call target, called
  computations)} and {computation: its instructions}."""
  instructions: dict[str, tuple] = {}
  bodies: dict[str, list[str]] = {}
  current = None
  for line in text.splitlines():
    header = _COMPUTATION.match(line)
    if header and " = " not in line:
      current = header.group("name")
      bodies[current] = []
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    rest = match.group("rest")
    opcode = _OPCODE.search(rest)
    op_name = re.search(r'op_name="([^"]*)"', rest)
    target = re.search(r'custom_call_target="([^"]*)"', rest)
    instructions[match.group("name")] = (
        opcode.group(1) if opcode else "",
        op_name.group(1) if op_name else "",
        target.group(1).lower() if target else "",
        _CALLS.findall(rest),
    )
    if current is not None:
      bodies[current].append(match.group("name"))
  return instructions, bodies


def _has_matmul(computation: str, instructions: dict, bodies: dict, seen: set[str]) -> bool:
  """`computation` or one it calls holds a dot or convolution."""
  if computation in seen:
    return False
  seen.add(computation)
  for name in bodies.get(computation, ()):
    opcode, _, _, calls = instructions[name]
    if opcode in _MATMUL_OPCODES or any(
        _has_matmul(c, instructions, bodies, seen) for c in calls
    ):
      return True
  return False


def classify_hlo(
    hlo_texts: Iterable[str], attention_scopes: Iterable[str] = ATTENTION_SCOPES
) -> dict[str, str]:
  """{instruction name: group} for every instruction of compiled HLO modules' texts
  (`jax.stages.Compiled.as_text()`)."""
  scopes = tuple(attention_scopes)
  groups = {}
  for text in hlo_texts:
    instructions, bodies = _parse_module(text)
    for name, (opcode, op_name, target, calls) in instructions.items():
      if _base_opcode(opcode) in _COLLECTIVES:
        group = "collective"
      elif (opcode == "custom-call" and any(k in target for k in _ATTENTION_KERNELS)) or (
          _in_scope(op_name, scopes)
      ):
        group = "attention"
      elif (
          opcode in _MATMUL_OPCODES
          or (opcode == "custom-call" and any(k in target for k in _MATMUL_KERNELS))
          or (opcode == "fusion"
              and any(_has_matmul(c, instructions, bodies, set()) for c in calls))
      ):
        group = "matmul"
      elif opcode in _ELEMENTWISE:
        group = "elementwise"
      else:
        group = "other"
      groups[name] = group
  return groups


def classify_name(op: str) -> str:
  """An op's group from its name alone (ops of modules whose HLO the caller did not give)."""
  name = op.lower()
  base = _base_opcode(name.split(".")[0])
  if base in _COLLECTIVES or any(c.replace("-", "") in name.replace("-", "")
                                  for c in ("all-reduce", "all-gather", "reduce-scatter",
                                            "all-to-all", "collective-permute", "nccl")):
    return "collective"
  if any(k in name for k in _ATTENTION_KERNELS):
    return "attention"
  if base in _MATMUL_OPCODES or any(k in name for k in _MATMUL_KERNELS):
    return "matmul"
  if base in _ELEMENTWISE or "fusion" in name or "loop_" in name or "input_" in name:
    return "elementwise"
  return "other"


class ProfileWindow:
  """A trace of steps `start`..`start + steps - 1` into `logdir` (`steps=0`: no trace).

  A loop calls `begin()` before step `first_traced` (one step ahead of the window, so the
  tracer's own start-up falls outside it), runs each step from there inside `annotate(step)` with
  its results made ready (so a window step's annotation spans the device's work), and `end()`
  after the last one, which returns the xplane file. `step(n)` does all three around one step.
  """

  def __init__(self, logdir: str | Path, start: int, steps: int, name: str = "train"):
    self.logdir, self.start, self.steps, self.name = Path(logdir), start, steps, name
    self.trace_path: Path | None = None
    self.hlo_texts: list[str] = []  # compiled modules whose ops `classify_hlo` can group
    self._tracing = False
    self._before: set[Path] = set()

  @property
  def last(self) -> int:
    return self.start + self.steps - 1

  @property
  def first_traced(self) -> int:
    return max(self.start - 1, 1)

  def covers(self, step: int) -> bool:
    """Step `step` is in the window."""
    return self.steps > 0 and self.start <= step <= self.last

  def traces(self, step: int) -> bool:
    """Step `step` runs while the trace does (the window and the step before it)."""
    return self.steps > 0 and self.first_traced <= step <= self.last

  def begin(self) -> None:
    self._before = set(self.logdir.glob("plugins/profile/*/*.xplane.pb"))
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0  # Python function events cost more than small steps take
    jax.profiler.start_trace(str(self.logdir), profiler_options=options)
    self._tracing = True

  def annotate(self, step: int) -> contextlib.AbstractContextManager:
    if not (self._tracing and self.covers(step)):
      return contextlib.nullcontext()
    return jax.profiler.StepTraceAnnotation(self.name, step_num=step)

  def end(self) -> Path | None:
    """Ends the trace (if one runs); the file it wrote."""
    if self._tracing:
      jax.profiler.stop_trace()
      self._tracing = False
      new = sorted(set(self.logdir.glob("plugins/profile/*/*.xplane.pb")) - self._before)
      self.trace_path = new[-1] if new else None
    return self.trace_path

  @contextlib.contextmanager
  def step(self, step: int) -> Iterator[None]:
    if step == self.first_traced and self.steps > 0:
      self.begin()
    try:
      with self.annotate(step):
        yield
    finally:
      if step == self.last:
        self.end()


def _stat(event, key: str):
  for name, value in event.stats:
    if name == key:
      return value
  return None


def summarize(
    trace_path: str | Path, hlo_groups: dict[str, str] | None = None, step_name: str = "train"
) -> dict:
  """Per-step device self-time of the trace's XLA ops, by group and for the top ops, against the
  step time of the window's `step_name` annotations (see the module docstring)."""
  from jax.profiler import ProfileData

  hlo_groups = hlo_groups or {}
  data = ProfileData.from_file(str(trace_path))
  planes = list(data.planes)
  device_planes = [p for p in planes if p.name.startswith("/device:")]
  spans = []  # (start, end) of each step annotation
  for plane in planes:
    for line in plane.lines:
      spans += [(e.start_ns, e.start_ns + e.duration_ns) for e in line.events
                if e.name == step_name and _stat(e, "step_num") is not None]
  steps = [end - start for start, end in spans]
  in_steps = lambda t: any(start <= t < end for start, end in spans)
  lines = []  # the ops of each line
  for plane in device_planes or [p for p in planes if p.name.startswith("/host:")]:
    for line in plane.lines:
      ops = []
      for event in line.events:
        op = _stat(event, "hlo_op")
        if op is None and line.name == "XLA Ops":
          op = event.name
        if op is None:
          continue
        device = plane.name if device_planes else _stat(event, "device_ordinal")
        ops.append((event.start_ns, event.start_ns + event.duration_ns, str(op), device))
      lines.append(ops)
  # Ops that start inside a step annotation (not the lead-in step's), when the clocks agree.
  if any(in_steps(o[0]) for ops in lines for o in ops):
    lines = [[o for o in ops if in_steps(o[0])] for ops in lines]
  op_time: dict[str, float] = {}
  devices = set()
  for ops in lines:
    for op, self_ns, device in _self_times(ops):
      op_time[op] = op_time.get(op, 0.0) + self_ns
      devices.add(device)
  step_count = max(len(steps), 1)
  scale = 1e-9 / step_count / max(len(devices), 1)  # ns over the window -> s per step per device
  step_time_s = sum(steps) * 1e-9 / step_count if steps else None
  by_group = dict.fromkeys(GROUPS, 0.0)
  ops = []
  for op, ns in sorted(op_time.items(), key=lambda kv: -kv[1]):
    group = hlo_groups.get(op) or classify_name(op)
    by_group[group] += ns * scale
    ops.append({"op": op, "group": group, "time_s": ns * scale})
  share = (lambda t: t / step_time_s) if step_time_s else (lambda t: None)
  op_total = sum(by_group.values())
  top = max(GROUPS, key=lambda g: by_group[g]) if op_total else None
  return {
      "trace": str(trace_path),
      "steps": len(steps),
      "devices": len(devices),
      "step_time_s": step_time_s,
      "op_time_s": op_total,
      "op_time_fraction": share(op_total),
      # step time no op ran in (runtime overhead, host work, idle), when ops do not overlap
      "outside_ops_s": max(step_time_s - op_total, 0.0) if step_time_s else None,
      "groups": {g: {"time_s": by_group[g], "share": share(by_group[g])} for g in GROUPS},
      "top_group": top,
      "top_group_share": share(by_group[top]) if top else None,
      "top_ops": [{**o, "share": share(o["time_s"])} for o in ops[:TOP_OPS]],
  }


def _self_times(ops: list[tuple[float, float, str, object]]) -> Iterator[tuple[str, float, object]]:
  """(op, self-time, device) of ops on one line: each op's span less its nested ops' spans."""
  stack: list[list] = []  # [end, op, duration, device, children's time]
  for start, end, op, device in sorted(ops, key=lambda o: (o[0], -o[1])):
    while stack and stack[-1][0] <= start:
      done = stack.pop()
      yield done[1], done[2] - done[4], done[3]
    if stack:
      stack[-1][4] += end - start
    stack.append([end, op, end - start, device, 0.0])
  while stack:
    done = stack.pop()
    yield done[1], done[2] - done[4], done[3]


def table(summary: dict) -> str:
  """The summary as a short text table: the groups, then the top ops, with shares of the step."""
  pct = lambda v: "   n/a" if v is None else f"{v:6.1%}"
  step = summary["step_time_s"]
  lines = [
      f"profile: {summary['steps']} steps, step time {'n/a' if step is None else f'{step:.4f} s'}"
      f", XLA ops {summary['op_time_s']:.4f} s/step ({pct(summary['op_time_fraction']).strip()} "
      "of the step)",
      f"  {'group':<14}{'s/step':>10}{'share':>8}",
  ]
  for group, g in sorted(summary["groups"].items(), key=lambda kv: -kv[1]["time_s"]):
    lines.append(f"  {group:<14}{g['time_s']:10.5f}{pct(g['share']):>8}")
  outside = summary["outside_ops_s"]
  if outside is not None:
    lines.append(f"  {'(no XLA op)':<14}{outside:10.5f}{pct(outside / step):>8}")
  lines.append(f"  {'top op':<40}{'group':<13}{'s/step':>10}{'share':>8}")
  for o in summary["top_ops"]:
    lines.append(f"  {o['op'][:39]:<40}{o['group']:<13}{o['time_s']:10.5f}{pct(o['share']):>8}")
  return "\n".join(lines)
