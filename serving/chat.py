"""ChatService: turns an OpenAI chat request into vLLM generation and a Completion event.

Takes its engine, tokenizer, policy router, token signer, event publisher and metrics as
constructor arguments; knows nothing about HTTP. Every finished response (streamed or not)
publishes exactly one Completion event, stamped with the policy version that produced it.
The request's checks are serving/sampling.py's; what a response is made of, serving/outputs.py's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, aclosing
from dataclasses import replace

from pydantic import BaseModel
from vllm import SamplingParams
from vllm.inputs import TokensPrompt
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from flywheel.errors import APIError
from flywheel.limits import RateLimiter
from flywheel.publisher import BufferedPublisher
from flywheel.settings import ServingSettings
from flywheel.tokens import FeedbackToken
from serving.metrics import ServingMetrics
from serving.outputs import ChoiceState, MergedOutputs, Prepared, choice_logprobs, completion_event
from serving.policy import PolicyRouter, ServedPolicy, UnknownPolicyVersion
from serving.protocol import (
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChoiceLogprobs,
    DeltaMessage,
    StreamChoice,
    Usage,
)
from serving.sampling import check_limits, logit_bias, structured_outputs
from serving.sampling import prompt_ids as request_prompt_ids
from serving.tools import ToolStream, tool_output, wants_tools

log = logging.getLogger(__name__)


class ChatService:
    def __init__(
        self,
        engine: AsyncLLM,
        tokenizer,
        settings: ServingSettings,
        router: PolicyRouter,
        tokens: FeedbackToken,
        publisher: BufferedPublisher | None,
        metrics: ServingMetrics,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.settings = settings
        self.request_limiter = RateLimiter(settings.chat_rate_limit_per_s, settings.chat_rate_limit_burst)
        self.token_limiter = RateLimiter(settings.chat_tokens_per_s, settings.chat_tokens_burst)
        self.router = router
        self.tokens = tokens
        self.publisher = publisher
        self.metrics = metrics

    # -- preparation: every check that can fail happens before generation starts

    def _admit(self, user_id: str, tokens: int) -> None:
        """Bound what one client can queue: the engine's queue (503), each user's requests and tokens (429)."""
        s = self.settings
        if sum(self.router.in_flight.values()) >= s.max_queued_requests:
            raise APIError(503, f"the engine has {s.max_queued_requests} requests in hand; retry shortly",
                           type_="service_unavailable", code="overloaded", headers={"Retry-After": "1"})  # fmt: skip
        for limiter, cost, what in ((self.request_limiter, 1, "chat requests"), (self.token_limiter, tokens, "tokens")):
            wait = limiter.allow(user_id, min(cost, limiter.burst))
            if wait:
                raise APIError(429, f"too many {what} from this user; retry in {wait:.1f} s", type_="rate_limit_error",
                               code="rate_limited", headers={"Retry-After": str(max(1, math.ceil(wait)))})  # fmt: skip

    def prepare(self, request: ChatCompletionRequest, user_id: str, stream: bool) -> Prepared:
        check_limits(request, self.settings, self.tokenizer)
        try:
            policy = self.router.pick_version(user_id, request.policy_version)
        except UnknownPolicyVersion as exc:
            raise APIError(404, str(exc), param="policy_version", code="policy_version_not_found") from None
        choice_policies: list[ServedPolicy] = []
        canary = self.router.canary
        if request.compare_versions and canary is not None and canary.version != self.router.stable.version:
            choice_policies = [self.router.stable, canary]
            random.shuffle(choice_policies)  # neither side always first
        elif request.compare_versions and request.temperature == 0:
            raise APIError(400, "no canary to compare with now; greedy decoding would give one answer twice", param="n")
        prompt_ids = request_prompt_ids(request, self.tokenizer)
        room = self.settings.max_model_len - len(prompt_ids)
        max_tokens = request.requested_max_tokens()
        if room < 1 or (max_tokens is not None and max_tokens > room):
            raise APIError(
                400,
                f"this model's maximum context length is {self.settings.max_model_len} tokens; the "
                f"messages use {len(prompt_ids)} and {max_tokens or 1} more were requested",
                param="messages",
                code="context_length_exceeded",
            )
        if max_tokens is None:
            max_tokens = min(self.settings.default_max_tokens, room)
        constraint = structured_outputs(request)
        bias = logit_bias(request, self.tokenizer)
        self._admit(user_id, max_tokens * request.n)
        sampling = SamplingParams(
            n=1 if choice_policies else request.n,  # compare mode: one engine request per choice
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=max_tokens,
            stop=request.stop_list() or None,
            seed=request.seed,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            ignore_eos=request.ignore_eos,
            logprobs=(request.top_logprobs or 0) if request.logprobs else None,
            structured_outputs=constraint,
            logit_bias=bias,
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
            # a tool parser reads the model's call markers, which some tokenizers mark special
            skip_special_tokens=not (wants_tools(request) and request.tool_choice in (None, "auto")),
        )
        return Prepared(
            completion_id=f"chatcmpl-{uuid.uuid4().hex}",
            user_id=user_id,
            policy=policy,
            prompt_ids=prompt_ids,
            prompt_text=None if request.templated_from_messages()
            else self.tokenizer.decode(prompt_ids, clean_up_tokenization_spaces=False),
            sampling=sampling,
            request=request,
            # Never the request's `model`: a client must not choose what every chunk and event repeats.
            model_name=self.settings.served_model_name,
            created=int(time.time()),
            started_at=time.perf_counter(),
            choices={i: ChoiceState(index=i) for i in range(request.n)},
            choice_policies=choice_policies,
        )

    # -- generation

    def _still_served(self, prep: Prepared) -> None:
        """Pick again where the engine's weights changed since `prepare` and the version went with them."""
        router = self.router
        if prep.policy.version not in router.loaded:
            pinned = prep.request.policy_version
            if pinned is not None:  # never another version than the one asked for
                message = f"policy version {pinned!r} was unloaded while waiting; loaded: {sorted(router.loaded)}"
                raise APIError(404, message, param="policy_version", code="policy_version_not_found")
            prep.policy = router.pick_version(prep.user_id)
        if prep.choice_policies and any(p.version not in router.loaded for p in prep.choice_policies):
            canary = router.canary if router.canary is not None else router.stable
            prep.choice_policies = random.sample([router.stable, canary], 2)

    async def _generate(self, prep: Prepared) -> AsyncIterator[RequestOutput]:
        # The version stays loaded until this request is over (finished, aborted or disconnected).
        await self.router.wait_open()
        self._still_served(prep)  # and from here the request counts as in flight: no await in between
        if prep.choice_policies:
            async for output in self._generate_per_choice(prep):
                yield output
            return
        with self.router.using(prep.policy):
            async for output in self.engine.generate(
                TokensPrompt(prompt_token_ids=prep.prompt_ids),
                prep.sampling,
                prep.completion_id,
                lora_request=prep.policy.lora,
            ):
                yield output

    async def _generate_per_choice(self, prep: Prepared) -> AsyncIterator[MergedOutputs]:
        """Compare mode: one engine request per choice, each on its own version, merged as they come."""
        queue: asyncio.Queue[MergedOutputs | BaseException | None] = asyncio.Queue()

        async def run(index: int, policy: ServedPolicy) -> None:
            try:
                async for output in self.engine.generate(
                    TokensPrompt(prompt_token_ids=prep.prompt_ids),
                    prep.sampling,
                    f"{prep.completion_id}-{index}",
                    lora_request=policy.lora,
                ):
                    await queue.put(MergedOutputs([replace(piece, index=index) for piece in output.outputs]))
            except BaseException as exc:  # handed to the consumer, which re-raises it
                await queue.put(exc)
            finally:
                await queue.put(None)

        busy = ExitStack()  # both versions count as in flight from now, before the tasks first run
        for policy in prep.choice_policies:
            busy.enter_context(self.router.using(policy))
        tasks = [asyncio.create_task(run(i, policy)) for i, policy in enumerate(prep.choice_policies)]
        try:
            running = len(tasks)
            while running:
                item = await queue.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            busy.close()

    def _absorb(self, prep: Prepared, output: CompletionOutput) -> tuple[ChoiceState, ChoiceLogprobs | None]:
        state = prep.choices[output.index]
        if prep.first_token_at is None and output.token_ids:
            prep.first_token_at = time.perf_counter()
            self.metrics.ttft.labels(prep.policy.version).observe(prep.first_token_at - prep.started_at)
        state.text += output.text
        state.token_ids.extend(output.token_ids)
        logprobs = None
        if output.logprobs is not None and prep.request.logprobs:
            logprobs = choice_logprobs(output, prep.request.top_logprobs or 0, self.tokenizer)
            state.token_logprobs.extend(entry.logprob for entry in logprobs.content or [])
        if output.finish_reason is not None:
            state.finish_reason = output.finish_reason
        return state, logprobs

    def _feedback_token(self, prep: Prepared, index: int) -> str | None:
        if prep.request.store is False:  # not kept: no completion for feedback to point at
            return None
        return self.tokens.issue(prep.completion_id, index, prep.request.n, prep.user_id, prep.policy_of(index).version)

    async def complete(self, prep: Prepared) -> ChatCompletionResponse:
        final: RequestOutput | None = None
        logprobs: dict[int, ChoiceLogprobs | None] = {}
        try:
            async for final in self._generate(prep):
                for output in final.outputs:
                    _, logprobs[output.index] = self._absorb(prep, output)
        except BaseException:
            self._finish(prep, outcome="aborted")
            raise
        choices = [
            Choice(
                index=state.index,
                message=message,
                finish_reason=_finish_reason(state, message),
                logprobs=logprobs.get(state.index),
                feedback_token=self._feedback_token(prep, state.index),
                policy_version=prep.policy_of(state.index).version,
            )
            for state in prep.choices.values()
            for message in [self._message(prep, state)]
        ]
        usage = self._finish(prep, outcome="completed")
        return ChatCompletionResponse(
            id=prep.completion_id,
            created=prep.created,
            model=prep.model_name,
            choices=choices,
            usage=usage,
            policy_version=prep.policy.version,
        )

    def _message(self, prep: Prepared, state: ChoiceState) -> AssistantMessage:
        if not wants_tools(prep.request):
            return AssistantMessage(content=state.text)
        out = tool_output(prep.request, state.text, self.tokenizer, self.settings.tool_call_parser)
        return AssistantMessage(content=out.content, tool_calls=out.tool_calls or None)

    async def stream(self, prep: Prepared, shape: Callable[[ChatCompletionChunk], BaseModel] | None = None
                     ) -> AsyncIterator[str]:  # fmt: skip
        """Server-sent events: one chunk per delta (as `shape` makes it: /v1/completions), `data: [DONE]` last.

        With tools, a call streams as OpenAI's do: its id and name, then its arguments (serving/tools.py).
        """
        async with aclosing(self.chunks(prep)) as chunks:  # a client that leaves aborts the engine request now
            async for chunk in chunks:
                yield self._sse(shape(chunk) if shape else chunk)
        yield "data: [DONE]\n\n"

    async def chunks(self, prep: Prepared) -> AsyncIterator[ChatCompletionChunk]:
        """The chunks of a streamed response; closing early (the client left) aborts and records it."""
        include_usage = bool(prep.request.stream_options and prep.request.stream_options.include_usage)
        completed = False
        tools = wants_tools(prep.request)
        streams: dict[int, ToolStream] = {}
        try:
            async for output in self._generate(prep):
                for piece in output.outputs:
                    state, logprobs = self._absorb(prep, piece)
                    finish_reason = state.finish_reason
                    if tools:
                        stream = streams.get(state.index)
                        if stream is None:
                            stream = streams[state.index] = ToolStream(prep.request, self.tokenizer,
                                                                       self.settings.tool_call_parser)  # fmt: skip
                        delta = stream.delta(piece.text, piece.token_ids, finish_reason is not None)
                        if delta is None and finish_reason is None and logprobs is None:
                            continue  # the parser holds these tokens back (a call's markers, say)
                        delta = delta or DeltaMessage()
                        if finish_reason == "stop" and stream.called:
                            finish_reason = "tool_calls"
                    else:
                        delta = DeltaMessage(content=piece.text)
                    token = None
                    if not state.started:
                        state.started = True
                        delta.role = "assistant"
                        token = self._feedback_token(prep, state.index)
                    if state.finish_reason is not None:
                        token = self._feedback_token(prep, state.index)
                    choice = StreamChoice(
                        index=state.index,
                        delta=delta,
                        finish_reason=finish_reason,
                        logprobs=logprobs,
                        feedback_token=token,
                        policy_version=prep.policy_of(state.index).version if token else None,
                    )
                    yield self._chunk(prep, [choice])
            completed = True
            usage = self._finish(prep, outcome="completed")
            if include_usage:
                yield self._chunk(prep, [], usage)
        finally:
            if not completed:
                # The client went away (or the engine failed): the engine aborts the request
                # when this generator closes; the partial response is still recorded.
                self._finish(prep, outcome="aborted")

    def _chunk(self, prep: Prepared, choices: list[StreamChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=prep.completion_id,
            created=prep.created,
            model=prep.model_name,
            choices=choices,
            usage=usage,
            policy_version=prep.policy.version,
        )

    @staticmethod
    def _sse(chunk: BaseModel) -> str:
        return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

    # -- bookkeeping once a response is over

    def _finish(self, prep: Prepared, outcome: str) -> Usage:
        completion_tokens = sum(len(s.token_ids) for s in prep.choices.values())
        usage = Usage(
            prompt_tokens=len(prep.prompt_ids),
            completion_tokens=completion_tokens,
            total_tokens=len(prep.prompt_ids) + completion_tokens,
        )
        version = prep.policy.version
        self.metrics.generated_tokens.labels(version).inc(completion_tokens)
        self.metrics.prompt_tokens.labels(version).inc(len(prep.prompt_ids))
        self.metrics.chat_completions.labels(version, outcome).inc()
        if outcome == "aborted":
            for state in prep.choices.values():
                state.finish_reason = state.finish_reason or "abort"
        if self.publisher is not None and prep.request.store is not False:
            event = completion_event(prep, usage)
            self.publisher.publish(prep.completion_id, event.SerializeToString())
        return usage


def _finish_reason(state: ChoiceState, message: AssistantMessage) -> str | None:
    return "tool_calls" if state.finish_reason == "stop" and message.tool_calls else state.finish_reason
