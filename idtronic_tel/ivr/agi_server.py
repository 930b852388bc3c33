"""The FastAGI listener: accepts Asterisk's connections and routes each session by script name.

`agi://host:4573/enroll?lang=fr` arrives as `agi_network_script: enroll?lang=fr` (Asterisk does not parse
the query string); the route is the part before `?`:

* `enroll`      enrollment and mobile-change callbacks (EnrollmentFlow)
* `voice-token` voice fallback (VoiceTokenFlow), only when [voice_fallback] enabled = true

Any other script gets a polite refusal (prompt, hang-up) and a log line. Whatever the flow does, the
session closes the socket at the end: Asterisk never closes it itself and the channel would leak.

The listen backlog matters: with a short one, connections that complete through SYN cookies are reset and
Asterisk reports AGISTATUS=SUCCESS for sessions the server never saw (docs/protocols/AGI.md). The
configured backlog is put into the endpoint string.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from idtronic_tel import endpoints
from idtronic_tel.config_schema import AgiConfig, CallbackConfig, VoiceFallbackConfig
from idtronic_tel.core.ports import IvrGateway
from idtronic_tel.ivr.agi_protocol import AgiError, AgiSession, Clock, PromptMissing, TurnaroundObserver
from idtronic_tel.ivr.call_flows import FlowSettings, report_missing_prompt
from idtronic_tel.ivr.enroll_flow import EnrollmentFlow
from idtronic_tel.ivr.prompts import Prompt
from idtronic_tel.ivr.token_flow import VoiceTokenFlow
from idtronic_tel.logsafe import loggable

log = Logger()

ENROLL_SCRIPT = "enroll"
VOICE_TOKEN_SCRIPT = "voice-token"

FlowClass = type[EnrollmentFlow] | type[VoiceTokenFlow]

# Endpoint types whose Twisted parser takes a `backlog` argument.
_BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix"})


def with_backlog(listen: str, backlog: int) -> str:
    """Put `backlog=` into a server endpoint string (`tcp:4573:interface=127.0.0.1`).

    An explicit different backlog in the string is a configuration conflict, refused rather than guessed.
    """
    if backlog < 1:
        raise ValueError("agi.backlog must be at least 1")
    parsed = endpoints.server(listen)
    if parsed.kind not in _BACKLOG_TYPES:
        raise ValueError(
            f"agi.listen endpoint type {parsed.kind!r} takes no backlog (use tcp, tcp6, ssl or unix)"
        )
    found = parsed.options.get("backlog")
    if found is not None:
        if found != str(backlog):
            raise ValueError(f"agi.listen says backlog={found} but agi.backlog is {backlog}")
        return listen
    return endpoints.with_option(listen, "backlog", str(backlog))


class AgiServerFactory(Factory):
    """Builds one AgiSession per connection and runs the flow its script names."""

    def __init__(
        self,
        clock: Clock,
        gateway: IvrGateway,
        settings: FlowSettings,
        command_timeout: float,
        voice_token_enabled: bool = False,
        language: str = "",
        on_turnaround: TurnaroundObserver | None = None,
    ) -> None:
        self.clock = clock
        self.language = language
        self.gateway = gateway
        self.settings = settings
        self.command_timeout = command_timeout
        self.on_turnaround = on_turnaround
        self.routes: Mapping[str, FlowClass] = {
            ENROLL_SCRIPT: EnrollmentFlow,
            **({VOICE_TOKEN_SCRIPT: VoiceTokenFlow} if voice_token_enabled else {}),
        }
        self.active = 0  # sessions in progress (metrics, tests)

    def buildProtocol(self, addr: object) -> AgiSession:
        session = AgiSession(self._handle, self.clock, self.command_timeout, on_turnaround=self.on_turnaround)
        session.factory = self
        return session

    async def _handle(self, session: AgiSession) -> None:
        assert session.env is not None
        self.active += 1
        try:
            await self._set_language(session)
            flow_class = self.routes.get(session.env.script)
            if flow_class is None:
                await refuse_unknown_script(session)
                return
            await flow_class(session, self.gateway, self.settings).run()
        finally:
            self.active -= 1

    async def _set_language(self, session: AgiSession) -> None:
        """Prompts exist in one language (sounds/<language>/); make the channel use it if the dialplan
        did not (the recorded dialplan does it with Set(CHANNEL(language)=fr))."""
        assert session.env is not None
        if self.language and session.env.get("agi_language") != self.language:
            # On failure the flow's first command meets the same problem and ends the call properly.
            with contextlib.suppress(AgiError):
                await session.command("SET VARIABLE", "CHANNEL(language)", self.language)


async def refuse_unknown_script(session: AgiSession) -> None:
    assert session.env is not None
    log.warn(
        "FastAGI request for unknown script {script} from channel {channel}; refusing",
        script=loggable(session.env.script),
        channel=loggable(session.env.get("agi_channel")),
    )
    try:
        await session.answer()
        await session.stream_file(Prompt.UNKNOWN_CALL.value)
        await session.hangup()
    except PromptMissing as exc:
        report_missing_prompt(exc, None)
        with contextlib.suppress(AgiError):
            await session.hangup()
    except AgiError:
        pass  # the caller left or Asterisk failed: the session closes anyway


def make_agi_factory(
    reactor: Clock,
    agi: AgiConfig,
    gateway: IvrGateway,
    callback: CallbackConfig,
    voice: VoiceFallbackConfig,
) -> AgiServerFactory:
    return AgiServerFactory(
        clock=reactor,
        gateway=gateway,
        settings=FlowSettings.from_config(callback, voice),
        command_timeout=agi.command_timeout,
        voice_token_enabled=voice.enabled,
        language=agi.language,
    )


def agi_endpoint(reactor: Clock, agi: AgiConfig) -> IStreamServerEndpoint:
    """agi.listen with agi.backlog in it."""
    endpoint: IStreamServerEndpoint = serverFromString(reactor, with_backlog(agi.listen, agi.backlog))
    return endpoint


def make_agi_service(
    reactor: Clock,
    agi: AgiConfig,
    gateway: IvrGateway,
    callback: CallbackConfig,
    voice: VoiceFallbackConfig,
) -> Service:
    """The FastAGI listener as a plain service (the daemon wraps the same parts in its Listener)."""
    factory = make_agi_factory(reactor, agi, gateway, callback, voice)
    service = StreamServerEndpointService(agi_endpoint(reactor, agi), factory)
    service.setName("fastagi")
    return service
