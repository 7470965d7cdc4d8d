"""Register sockproto's twistd plugins and its ``mtls:`` endpoint (registration only: the code
is in sockproto.tap and sockproto.serving.tls)."""

from twisted.application.service import ServiceMaker

from sockproto.serving.tls import MutualTLSServerParser

sockproto_frame = ServiceMaker(
    "sockproto-frame",
    "sockproto.tap.frame",
    "Framed-header request/response server (SPF/1, int32...) on stream endpoints",
    "sockproto-frame",
)
sockproto_halfclose = ServiceMaker(
    "sockproto-halfclose",
    "sockproto.tap.halfclose",
    "Half-close request/response server: one request per connection, ended by shutdown(SHUT_WR)",
    "sockproto-halfclose",
)
sockproto_datagram = ServiceMaker(
    "sockproto-datagram",
    "sockproto.tap.datagram",
    "UDP datagram request/response server (SPF/1 or raw), whole datagrams, retransmission-safe",
    "sockproto-datagram",
)
sockproto_all = ServiceMaker(
    "sockproto",
    "sockproto.tap.combined",
    "Every sockproto service on its default loopback endpoint",
    "sockproto",
)

# The mtls: server endpoint string (ssl: requiring a client certificate); pyOpenSSL is
# imported only when such a string is parsed.
sockproto_mtls_endpoint = MutualTLSServerParser()
