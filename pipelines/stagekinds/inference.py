"""The `model_inference` kind (per record): renders a prompt per record and calls a model (KServe V2 or OpenAI).

The model config's protocol decides the wire (KServe V2 over gRPC, or an OpenAI-compatible HTTP API); the stage
uses one client interface for both (modelclient.ModelClient), so templates, output mapping, quarantine, the
breaker and usage rows behave the same. Chat completions take one record per request, so their calls are cut
to one record each and run `max_in_flight` at once.

Records are sent in calls of ModelConfig.batch_size (at most ModelConfig.max_in_flight at once); outputs are
mapped back to fields; records the server rejects (INVALID_ARGUMENT) or whose prompt cannot be rendered are
quarantined with the reason; an open breaker raises BreakerOpen (with `retry_after`), which the engine turns
into a WAITING batch; token usage and call outcomes come back as StageResult.usage rows for tokens_usage.

Every finished call is kept in the batch's call journal (calljournal.py, in `StageContext.scratch`), so a
redo of the batch after a failure, crash or lost lease sends only the records whose calls did not come
back; tokens of calls that had been sent before without an answer are reported as retry cost.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from dataflare_portal.core.render import TRUNCATE, SafeTemplate, TemplateSyntaxError, compile_template

from .base import PerRecordStageKind, Quarantine, StageConfigError, StageContext, StageResult
from .calljournal import CallJournal, JournalEntry, call_fingerprint, stats_load

__all__ = ["ModelInferenceKind", "PromptError", "maybe_json", "prompt_fields", "render_prompt", "usage_rows"]

RECORD_CODES = frozenset({"INVALID_ARGUMENT", "OUT_OF_RANGE"})


# ---- prompt templates -------------------------------------------------------------------------------
class PromptError(ValueError):
    """A prompt template that cannot be used, or a record that lacks a field it needs."""

    def __init__(self, message: str, *, code: str = "PROMPT_TEMPLATE", field: str = ""):
        super().__init__(message)
        self.code = code
        self.field = field


def _as_text(value: Any) -> str:
    """Strings as they are; structures as JSON (what a model expects to read), not Python reprs."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


@functools.lru_cache(maxsize=128)
def _compiled(template: str) -> SafeTemplate:
    # Record fields form an open namespace: any plain name, and only a truncation spec ("{text:.2000}");
    # a width would let a template allocate arbitrary memory ("{text:>999999999}").
    try:
        return compile_template(template, placeholders=None, open_spec=TRUNCATE)
    except TemplateSyntaxError as exc:
        raise PromptError(exc.message) from None


def prompt_fields(template: str) -> list[str]:
    """The field names a template uses; raises PromptError if the template is malformed or unsafe."""
    return _compiled(template).names


def render_prompt(template: str, record: Mapping[str, Any]) -> str:
    """The prompt for one record; a missing (or null) field raises PromptError(code="MISSING_FIELD")."""
    compiled = _compiled(template)
    for name in compiled.names:
        if record.get(name) is None:
            raise PromptError(
                gettext("The record has no value for field '%(field)s' used by the prompt template.") % {"field": name},
                code="MISSING_FIELD",
                field=name,
            )
    return compiled.render(record, to_text=_as_text)


# ---- usage rows --------------------------------------------------------------------------------------
def usage_rows(
    stats, *, model_name: str, model_version: str, prompt_tokens: int, completion_tokens: int, retry_tokens: int = 0
) -> list:
    """tokens_usage rows (one per status code) from the CallStats of a batch's calls; tokens go on the OK row.

    `retry_tokens` is the part of prompt + completion tokens spent on calls made again (retry cost).
    """
    rows = []
    for code, attempts in sorted(stats.status_counts.items()):
        latencies = [s * 1000.0 for s in stats.latencies_by_code.get(code, [])]
        ok = code == "OK"
        rows.append(
            {
                "model_name": model_name,
                "model_version": model_version,
                "status_code": code,
                "requests": attempts,
                "records": int(stats.records_by_code.get(code, 0)),
                "prompt_tokens": prompt_tokens if ok else 0,
                "completion_tokens": completion_tokens if ok else 0,
                "retry_tokens": retry_tokens if ok else 0,
                "latency_ms_sum": sum(latencies),
                "latency_ms_max": max(latencies, default=0.0),
                "latency_ms_samples": latencies,
            }
        )
    return rows


# ---- the kind ----------------------------------------------------------------------------------------
@dataclass
class _Call:
    """One gRPC call's records (positions in the batch) and what came back."""

    positions: list[int]
    texts: list[str]
    keys: list[str] = field(default_factory=list)
    # Its records were sent by an earlier attempt whose answer never came back: its tokens are retry cost.
    retry: bool = False
    outputs: list[dict | None] = field(default_factory=list)
    quarantined: dict[int, tuple[str, str]] = field(default_factory=dict)  # position -> (code, reason)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_name: str = ""
    model_version: str = ""
    stats: Any = None

    @classmethod
    def from_journal(cls, entry: JournalEntry) -> _Call:
        """A call an earlier attempt made, for usage only (its results are reused by key)."""
        return cls(
            [],
            [],
            retry=entry.retry,
            prompt_tokens=entry.prompt_tokens,
            completion_tokens=entry.completion_tokens,
            model_name=entry.model_name,
            model_version=entry.model_version,
            stats=stats_load(entry.stats),
        )


def maybe_json(value: Any) -> Any:
    """BYTES outputs carrying JSON (annotations, signals) become structures in the record."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class ModelInferenceKind(PerRecordStageKind):
    """Sends a field of every record (or a rendered prompt) to a model and stores its outputs on the record."""

    name = "model_inference"
    label = _("Model inference")
    description = _("Call a model service (KServe V2 over gRPC, or an OpenAI-compatible API) for each record.")
    needs_model_config = True
    config_schema = {
        "type": "object",
        "properties": {
            "input_field": {
                "type": "string",
                "minLength": 1,
                "default": "text",
                "title": _("Input field"),
                "description": _("The field sent to the model when there is no prompt template."),
            },
            "output_field": {
                "type": "string",
                "minLength": 1,
                "default": "model_output",
                "title": _("Output field"),
                "description": _("The field that receives the model's output."),
            },
            "output_mode": {
                "enum": ["field", "merge"],
                "default": "field",
                "title": _("Output goes"),
                "x-enumLabels": {"field": _("into the output field"), "merge": _("merged into the record")},
            },
            # Over the model config's parameters.prompt_template; "{field}" placeholders take record fields.
            "prompt_template": {
                "type": "string",
                "title": _("Prompt template"),
                "description": _("`{field}` takes a field of the record; the model config's template when absent."),
            },
            # Request parameters over the model config's (temperature, max_tokens...).
            "parameters": {
                "type": "object",
                "title": _("Request parameters"),
                "description": _("Over the model config's, e.g. `temperature`."),
            },
            "on_error": {
                "enum": ["quarantine", "fail"],
                "default": "quarantine",
                "title": _("A record the model rejects"),
                "x-enumLabels": {"quarantine": _("is quarantined"), "fail": _("fails the run")},
            },
            # Model output name -> record field; when set, only these outputs are kept.
            "outputs": {
                "type": "object",
                "additionalProperties": {"type": "string", "minLength": 1},
                "minProperties": 1,
                "title": _("Model output → record field"),
                "description": _("When set, only these outputs are kept."),
            },
            "parse_json": {
                "type": "boolean",
                "default": True,
                "title": _("Parse JSON outputs"),
            },
        },
        "additionalProperties": False,
    }

    def check_config(self, config: dict) -> None:
        """The prompt template must parse and use only plain field names."""
        template = config.get("prompt_template")
        if template is not None:
            try:
                prompt_fields(template)
            except PromptError as exc:
                raise StageConfigError(str(exc), "$.prompt_template")

    # -- per batch

    def process(self, records: list[dict], ctx: StageContext) -> StageResult:
        """Render, call in bounded parallel batches, map outputs back; see the module docstring."""
        from pipelines.model_configs import model_client, model_config_endpoint

        mc = ctx.model_config
        if mc is None:
            raise StageConfigError(gettext("This stage kind needs a model config."), "$")
        config = self.defaults(ctx.config)
        endpoint = model_config_endpoint(mc)
        template = config.get("prompt_template") or (mc.parameters or {}).get("prompt_template") or ""
        parameters = dict(config.get("parameters") or {})
        fail_fast = config.get("on_error") == "fail"

        quarantined: dict[int, tuple[str, str]] = {}
        positions: list[int] = []
        texts: list[str] = []
        for i, record in enumerate(records):
            try:
                if template:
                    text = render_prompt(template, record)
                else:
                    value = record.get(config["input_field"])
                    if value is None:
                        raise PromptError(
                            gettext("The record has no value for input field '%(field)s'.")
                            % {"field": config["input_field"]},
                            code="MISSING_FIELD",
                        )
                    text = _as_text(value)
            except PromptError as exc:
                if fail_fast or exc.code != "MISSING_FIELD":
                    raise
                quarantined[i] = (exc.code, str(exc))
                continue
            positions.append(i)
            texts.append(text)

        journal = CallJournal(ctx.scratch, ctx.attempt, call_fingerprint(endpoint, parameters))
        outputs: dict[int, dict] = {}
        fresh: list[tuple[int, str, str]] = []
        again: list[tuple[int, str, str]] = []
        for pos, text in zip(positions, texts, strict=True):
            key = journal.key(text)
            hit = journal.results.get(key)
            if hit is not None:  # an earlier attempt's call came back: reuse it, do not call again
                out, rejected = hit
                if rejected is not None:
                    quarantined[pos] = tuple(rejected)
                else:
                    outputs[pos] = out
                continue
            (again if key in journal.unanswered else fresh).append((pos, text, key))
        size = 1 if endpoint.one_record_per_request else max(1, int(mc.batch_size))
        # Records sent before without an answer go in calls of their own, so retry cost is exactly theirs.
        calls = [
            _Call([p for p, _t, _k in part], [t for _p, t, _k in part], [k for _p, _t, k in part], retry=retry)
            for todo, retry in ((fresh, False), (again, True))
            for part in (todo[k : k + size] for k in range(0, len(todo), size))
        ]
        inherited = [_Call.from_journal(e) for e in journal.unreported]
        client = model_client()
        try:
            self._run_calls(client, endpoint, parameters, calls, ctx, mc, journal)
        except Exception as exc:
            if getattr(exc, "usage", None) is not None:
                # The engine records this usage with the failure: the calls inherited from attempts that
                # never reported (killed, lease lost) are counted now, and marked so no later attempt recounts.
                exc.usage = self._usage(calls + inherited, endpoint)
                journal.reported()
            raise
        finally:
            journal.close()

        for call in calls:
            quarantined.update(call.quarantined)
            for pos, out in zip(call.positions, call.outputs, strict=True):
                if out is not None:
                    outputs[pos] = out
        if fail_fast and quarantined:
            pos, (code, reason) = min(quarantined.items())
            raise ValueError(
                gettext("Record %(i)s was rejected (%(code)s): %(reason)s") % {"i": pos, "code": code, "reason": reason}
            )

        out_records: list[dict] = []
        for i, record in enumerate(records):
            if i in quarantined:
                continue
            mapped, problem = self._map_outputs(record, outputs[i], config)
            if problem:
                quarantined[i] = ("MISSING_OUTPUT", problem)
                continue
            out_records.append(mapped)
        return StageResult(
            records=out_records,
            quarantined=[Quarantine(i, code, reason, records[i]) for i, (code, reason) in sorted(quarantined.items())],
            usage=self._usage(calls + inherited, endpoint),
        )

    def _map_outputs(self, record: dict, outputs: dict, config: dict) -> tuple[dict, str]:
        """The record with the model's outputs on it (or a reason why they cannot be mapped)."""
        parse = config.get("parse_json", True)
        values = {k: (maybe_json(v) if parse else v) for k, v in outputs.items()}
        out = dict(record)
        mapping = config.get("outputs")
        if mapping:
            missing = [name for name in mapping if name not in values]
            if missing:
                return out, gettext("The model returned no output %(missing)s (it returned: %(got)s).") % {
                    "missing": ", ".join(missing),
                    "got": ", ".join(sorted(values)) or "-",
                }
            for name, dest in mapping.items():
                out[dest] = values[name]
        elif config.get("output_mode") == "merge":
            out.update(values)
        else:
            out[config["output_field"]] = values
        return out, ""

    def _usage(self, calls: list[_Call], endpoint) -> list[dict]:
        """One usage row per (model, version, status code) over every call of the batch."""
        from modelclient import CallStats

        groups: dict[tuple[str, str], list[_Call]] = defaultdict(list)
        fallback_version = next((c.model_version for c in calls if c.model_version), endpoint.model_version)
        for call in calls:
            if call.stats is None:
                continue
            groups[(call.model_name or endpoint.model_name, call.model_version or fallback_version)].append(call)
        rows = []
        for (model_name, version), group in groups.items():
            stats = CallStats()
            for call in group:
                stats.merge(call.stats)
            rows += usage_rows(
                stats,
                model_name=model_name,
                model_version=version,
                prompt_tokens=sum(c.prompt_tokens for c in group),
                completion_tokens=sum(c.completion_tokens for c in group),
                retry_tokens=sum(c.prompt_tokens + c.completion_tokens for c in group if c.retry),
            )
        return rows

    # -- calls

    def _call_one(self, client, endpoint, parameters: dict, call: _Call, journal: CallJournal) -> None:
        """One call with bisection of rejected records; an oversized message is split, not quarantined.

        Journalled before it is sent and when it came back (see calljournal.py).
        """
        from modelclient import CallStats, PermanentModelError

        call.stats = CallStats()
        call.outputs = [None] * len(call.texts)
        journal.start(call.keys)
        pending = [(0, len(call.texts))]
        while pending:
            lo, hi = pending.pop()
            try:
                res = client.infer_texts_isolating(endpoint, call.texts[lo:hi], parameters)
            except PermanentModelError as exc:
                if exc.stats is not None:
                    call.stats.merge(exc.stats)
                if not exc.message_too_large:
                    raise
                if hi - lo == 1:
                    call.quarantined[call.positions[lo]] = (
                        "MESSAGE_TOO_LARGE",
                        gettext("The record is larger than the gRPC message limit."),
                    )
                    continue
                mid = (lo + hi) // 2
                pending += [(mid, hi), (lo, mid)]
                continue
            except Exception as exc:
                stats = getattr(exc, "stats", None)
                if stats is not None:
                    call.stats.merge(stats)
                raise
            call.stats.merge(res.stats)
            call.prompt_tokens += res.prompt_tokens
            call.completion_tokens += res.completion_tokens
            call.model_name, call.model_version = res.model_name, res.model_version
            for offset, out in enumerate(res.outputs):
                call.outputs[lo + offset] = out
            for offset, reason in res.quarantined.items():
                code = reason.split(":", 1)[0] if reason.split(":", 1)[0] in RECORD_CODES else "INVALID_ARGUMENT"
                call.quarantined[call.positions[lo + offset]] = (code, reason)
        local = {i: call.quarantined[p] for i, p in enumerate(call.positions) if p in call.quarantined}
        journal.done(call.keys, call, local)

    def _run_calls(
        self, client, endpoint, parameters: dict, calls: list[_Call], ctx: StageContext, mc, journal: CallJournal
    ) -> None:
        """Run the calls with at most max_in_flight at once; stop early on an open breaker or a lost lease."""
        from modelclient import BreakerOpen, TransientModelError

        if not calls:
            return
        lease = (ctx.extra or {}).get("lease")
        errors: list[BaseException] = []
        workers = max(1, min(int(mc.max_in_flight), len(calls)))
        serial = calls if workers == 1 else []
        if workers > 1 and client.breaker(endpoint).snapshot().state != "closed":
            # A recovering endpoint admits one probe call: send the first call alone, so the batch that
            # holds the probe goes on in parallel once it succeeds instead of waiting with the others.
            serial, calls_left = calls[:1], calls[1:]
        else:
            calls_left = calls if workers > 1 else []
        if serial:
            for call in serial:
                if lease is not None:
                    lease.check()
                try:
                    self._call_one(client, endpoint, parameters, call, journal)
                except Exception as exc:
                    errors.append(exc)
                    break
        if calls_left and not errors:
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model-call")
            try:
                pending: set[Future] = {
                    pool.submit(self._call_one, client, endpoint, parameters, c, journal) for c in calls_left
                }
                while pending:
                    done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                    for fut in done:
                        if fut.exception() is not None:
                            errors.append(fut.exception())
                    if errors:
                        break
                    if lease is not None:
                        lease.check()
            finally:
                # Calls not started yet are dropped; running ones end by their deadline.
                pool.shutdown(wait=True, cancel_futures=True)
        if not errors:
            return
        usage = self._usage(calls, endpoint)
        breaker_open = next((e for e in errors if isinstance(e, BreakerOpen)), None)
        if breaker_open is None and any(isinstance(e, TransientModelError) for e in errors):
            # Our own failures may just have opened the breaker: then the stage waits rather than spending
            # its attempt budget on a server that is known to be down.
            snap = client.breaker(endpoint).snapshot()
            if snap.state != "closed":
                breaker_open = BreakerOpen(endpoint.key, snap.retry_after, snap.state)
                breaker_open.__cause__ = errors[0]
        if breaker_open is not None and breaker_open.state == "half_open":
            # Another worker holds the probe, whose lease is long (every attempt's deadline): check back after
            # about one deadline, when the probe has usually answered, rather than after the whole lease.
            breaker_open.retry_after = min(breaker_open.retry_after, max(1.0, endpoint.deadline_s))
        if breaker_open is not None:
            # The engine treats a zero wait as "unknown" (its default); a probe may be due right now.
            breaker_open.retry_after = max(0.5, breaker_open.retry_after)
        exc = breaker_open or errors[0]
        # The engine may record the usage of a batch that did not complete (failures by status code).
        exc.usage = usage
        raise exc
