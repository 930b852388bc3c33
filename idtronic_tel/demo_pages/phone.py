"""The handset simulator (`/demo/phone`, demo mode only): the phone of any mobile number the daemon calls
or texts. It shows the SMS the built-in SMSC received for that number, newest first, and the calls the
emulated Asterisk places: the phone rings, the person answers (or declines), reads the prompts as they
play and keys digits on the keypad (or the keyboard); each digit goes to the IVR as DTMF on the emulated
FastAGI channel. Every action is a form post (it works without JavaScript); phone.js adds live updates
by polling `/demo/phone/state` (honouring Retry-After) and keys without reloading the page."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..api import french
from ..api.routing import Call, Reply, Route
from ..api.web import Html, Kit, Visit, alert, tag
from ..simulators.phones import PhoneBoard, PhoneCall, number_key, number_label, prompt_texts

_TITLE = "Téléphone de démonstration"
_CALL_STATE = {
    "ringing": "Appel entrant : le service id-tronic vous appelle.",
    "connected": "En ligne avec le service id-tronic.",
    "ended": "Appel terminé.",
}
_KEYPAD = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "0", "#")


def routes(kit: Kit, board: PhoneBoard) -> list[Route]:
    texts = prompt_texts()

    def chosen(visit: Visit) -> str:
        """The number asked for (`?numero=`), else the most recently active one ("" when none)."""
        asked = (visit.request.args or {}).get(b"numero", [b""])[0].decode("utf-8", "replace")
        key = number_key(asked)
        if len(key) == 9:
            return key
        numbers = board.numbers()
        return numbers[0] if numbers else ""

    async def show(visit: Visit) -> Reply:
        return _page(visit, board, chosen(visit), texts)

    async def state(call: Call) -> Reply:
        asked = (call.request.args or {}).get(b"numero", [b""])[0].decode("utf-8", "replace")
        key = number_key(asked)
        if len(key) != 9:
            numbers = board.numbers()
            key = numbers[0] if numbers else ""
        return Reply(200, _state(board, key, texts), headers={"cache-control": "no-store"})

    def act(action: str) -> Any:
        async def handler(visit: Visit) -> Reply:
            form = visit.form()
            call = board.find(form.get("call", ""))
            if call is None:
                return _page(visit, board, chosen(visit), texts, "Cet appel n'existe plus.", 404)
            done = {
                "answer": call.answer,
                "decline": call.decline,
                "hangup": call.hang_up,
                "keys": lambda: call.press(form.get("keys", "")),
            }[action]()
            if not done:
                message = "Ce n'est plus possible : l'appel a changé d'état."
                return _page(visit, board, call.key, texts, message, 409)
            return visit.redirect(f"/demo/phone?numero={call.key}")

        return handler

    async def watch(visit: Visit) -> Reply:
        key = number_key(visit.form().get("numero", ""))
        if len(key) != 9:
            return _page(visit, board, chosen(visit), texts, "Un numéro de mobile à 10 chiffres.", 422)
        return visit.redirect(f"/demo/phone?numero={key}")

    return [
        kit.route("GET", "/demo/phone", show, "demo page: handset simulator", nav="Téléphone"),
        kit.route("POST", "/demo/phone/watch", watch, "demo: show a number's phone", limited=""),
        Route("GET", "/demo/phone/state", state, "public", "demo: the phone's state", {200: "object"}),
        *(
            kit.route("POST", f"/demo/phone/{action}", act(action), f"demo: {action}", limited="")
            for action in ("answer", "decline", "hangup", "keys")
        ),
    ]


def _spoken(what: str, texts: dict[str, str]) -> str:
    if what.startswith("digits:"):
        return "« " + " ".join(what[len("digits:") :]) + " »"
    return texts.get(what, what)


def _call_view(call: PhoneCall | None, texts: dict[str, str]) -> dict[str, Any] | None:
    if call is None:
        return None
    return {
        "id": call.id,
        "state": call.state,
        "label": _CALL_STATE[call.state],
        "prompt": _spoken(call.prompts[-1], texts) if call.prompts and call.state != "ended" else "",
        "listening": call.listening,
        "keyed": "•" * call.keyed,
    }


def _sms_view(board: PhoneBoard, key: str) -> list[dict[str, str]]:
    out = []
    for message in board.messages(key):
        at = dt.datetime.fromisoformat(message.received_at).astimezone(french.PARIS)
        out.append({"id": message.message_id, "at": at.strftime("%H:%M:%S"), "text": message.text})
    return out


def _state(board: PhoneBoard, key: str, texts: dict[str, str]) -> dict[str, Any]:
    return {
        "version": board.state_version(),
        "number": key,
        "numbers": board.numbers(),
        "call": _call_view(board.current_call(key), texts) if key else None,
        "sms": _sms_view(board, key) if key else [],
    }


def _page(
    visit: Visit,
    board: PhoneBoard,
    key: str,
    texts: dict[str, str],
    error: str | None = None,
    status: int = 200,
) -> Reply:
    numbers = board.numbers()
    if key and key not in numbers:
        numbers = [key, *numbers]
    tabs = tag(
        "ul",
        [
            tag(
                "li",
                tag(
                    "a",
                    number_label(number),
                    href=f"/demo/phone?numero={number}",
                    aria_current="page" if number == key else None,
                ),
            )
            for number in numbers
        ],
        class_="numbers",
        aria_label="Numéros",
    )
    watch = visit.form_tag(
        "/demo/phone/watch",
        tag(
            "div",
            tag(
                "div",
                tag("label", "Afficher le téléphone du numéro", for_="watch-numero"),
                tag(
                    "input", id="watch-numero", name="numero", type="tel", autocomplete="tel", maxlength="30"
                ),
            ),
            tag("button", "Afficher", type="submit", class_="secondary"),
            class_="row",
        ),
        id="watch-form",
    )
    state = _state(board, key, texts)
    body: list[object] = [
        tag("h1", _TITLE),
        tag(
            "p",
            "Ce téléphone simulé reçoit les appels et les SMS que le service envoie, pour n'importe quel "
            "numéro de mobile : inscrivez-vous avec le vôtre, puis décrochez ici.",
            class_="hint",
        ),
        alert(error) if error else None,
        tabs if numbers else tag("p", "Aucun appel ni SMS pour l'instant.", id="no-numbers"),
        watch,
    ]
    if key:
        body += [
            tag("h2", "Mobile ", tag("span", number_label(key), id="phone-number")),
            tag(
                "p",
                "Ce téléphone est celui du titulaire de démonstration : il répond tout seul aux appels "
                "(ils ne sont pas montrés ici). Pour vous inscrire, utilisez un autre numéro.",
                class_="hint",
                id="scripted",
            )
            if board.scripted(key)
            else None,
            _call_panel(visit, state["call"]),
            _sms_list(state["sms"]),
        ]
    main = tag(
        "div",
        *body,
        id="phone",
        class_="phone",
        data_number=key,
        data_version=str(state["version"]),
        data_numbers=",".join(numbers),
    )
    return visit.page(
        ("Erreur : " if error else "") + _TITLE,
        main,
        status=status,
        scripts=["/demo/static/phone.js"],
        here="/demo/phone",
    )


def _call_panel(visit: Visit, call: dict[str, Any] | None) -> Html:
    state = call["state"] if call else ""
    ident = call["id"] if call else ""

    def action(name: str, label: str, css: str, shown: bool) -> Html:
        return visit.form_tag(
            f"/demo/phone/{name}",
            tag("input", type="hidden", name="call", value=ident),
            tag("button", label, type="submit", class_=css),
            id=f"{name}-form",
            class_="inline",
            hidden=not shown,
        )

    keypad = visit.form_tag(
        "/demo/phone/keys",
        tag("input", type="hidden", name="call", value=ident),
        tag(
            "div",
            [tag("button", key, type="submit", name="keys", value=key) for key in _KEYPAD],
            class_="keypad",
            role="group",
            aria_label="Clavier du téléphone",
        ),
        tag("p", "Vous pouvez aussi taper les chiffres, * et # au clavier.", class_="hint"),
        id="keys-form",
        hidden=state != "connected",
    )
    return tag(
        "section",
        tag("h3", "Appel"),
        tag("p", call["label"] if call else "Aucun appel.", id="call-status", role="status"),
        tag("p", call["prompt"] if call else "", id="call-prompt", class_="prompt", aria_live="polite"),
        tag(
            "p",
            "Le service écoute : tapez maintenant." if call and call["listening"] else "",
            id="call-listening",
            class_="hint",
        ),
        tag("p", "Touches : ", tag("span", call["keyed"] if call else "", id="call-keyed"), class_="hint"),
        action("answer", "Décrocher", "", state == "ringing"),
        action("decline", "Refuser", "danger", state == "ringing"),
        keypad,
        action("hangup", "Raccrocher", "danger", state == "connected"),
        id="call",
        class_="call ringing" if state == "ringing" else "call",
        data_call=ident,
        data_state=state,
    )


def _sms_list(messages: list[dict[str, str]]) -> Html:
    items = [
        tag("li", tag("time", f"reçu à {m['at']}"), tag("span", m["text"]), class_="sms", data_id=m["id"])
        for m in messages
    ]
    return tag(
        "section",
        tag("h3", "SMS reçus"),
        tag("p", "Aucun SMS.", id="no-sms", hidden=bool(messages)),
        tag("ol", items, id="sms-list", class_="sms-list", aria_live="polite"),
        id="sms",
    )
