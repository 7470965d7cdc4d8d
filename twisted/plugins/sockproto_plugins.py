"""Register sockproto's twistd plugins (registration only: the code is in sockproto.tap)."""

from twisted.application.service import ServiceMaker

sockproto_frame = ServiceMaker(
    "sockproto-frame",
    "sockproto.tap.frame",
    "Framed-header request/response server (SPF/1, int32...) on stream endpoints",
    "sockproto-frame",
)
sockproto_all = ServiceMaker(
    "sockproto",
    "sockproto.tap.combined",
    "Every sockproto service on its default loopback endpoint",
    "sockproto",
)
