# A lazy plugin: twistd imports idtronic_tel.tap only when `twistd idtronic` is asked for.
from twisted.application.service import ServiceMaker

idtronic = ServiceMaker(
    "idtronic-tel", "idtronic_tel.tap", "id-tronic telephony daemon (API, SMPP, AMI, FastAGI)", "idtronic"
)
