"""A minimal Query/Retrieve SCU for the benchmark: one association, C-FIND and C-MOVE in
Implicit VR Little Endian, responses counted as they arrive, nothing decoded beyond the
command set. TCP_NODELAY is set on its socket.

Why not pynetdicom: its reactor thread sometimes takes a C-FIND response off the queue as
if it were a request ("Received unexpected C-FIND service message"), so a match goes
missing; and its DUL loop adds about a millisecond per received PDU, which would be most
of what is measured.
"""

import socket
import struct

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
IMPLICIT_LE = b"1.2.840.10008.1.2"
IMPLEMENTATION_UID = b"1.2.826.0.1.3680043.9.7433.1.1"
PENDING = (0xFF00, 0xFF01)
C_FIND_RQ, C_MOVE_RQ, C_ECHO_RQ = 0x0020, 0x0021, 0x0030
VERIFICATION = "1.2.840.10008.1.1"


def _item(kind, body):
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _uid(value):
    return value if len(value) % 2 == 0 else value + b"\0"


def _element(group, elem, value):
    return struct.pack("<HHI", group, elem, len(value)) + value


def _us(value):
    return struct.pack("<H", value)


def _command(fields):
    body = b"".join(_element(0x0000, e, v) for e, v in sorted(fields.items()))
    return _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def _parse_command(raw):
    out, at = {}, 0
    while at + 8 <= len(raw):
        _, elem, length = struct.unpack_from("<HHI", raw, at)
        out[elem] = raw[at + 8:at + 8 + length]
        at += 8 + length
    return out


def encode_identifier(ds):
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ds)
    return buf.getvalue()


class Association:
    """An association proposing `sop_classes` (one presentation context each)."""

    def __init__(self, port, called, sop_classes, calling="BENCH", host="127.0.0.1",
                 timeout=None):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.contexts = {}
        items = [_item(0x10, APPLICATION_CONTEXT)]
        for n, uid in enumerate(sop_classes):
            pc_id = 2 * n + 1
            self.contexts[uid] = pc_id
            items.append(_item(0x20, bytes([pc_id, 0, 0, 0])
                               + _item(0x30, _uid(uid.encode()))
                               + _item(0x40, IMPLICIT_LE)))
        items.append(_item(0x50, _item(0x51, struct.pack(">I", 0))
                           + _item(0x52, IMPLEMENTATION_UID)))
        body = (struct.pack(">HH", 1, 0) + called.encode().ljust(16)
                + calling.encode().ljust(16) + b"\0" * 32 + b"".join(items))
        self.sock.sendall(struct.pack(">BBI", 0x01, 0, len(body)) + body)
        kind, body = self._pdu()
        if kind != 0x02:
            raise RuntimeError("association with %s refused (PDU type %d)" % (called, kind))
        self.message_id = 0

    def _read(self, n):
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("connection closed by the peer")
            out += chunk
        return bytes(out)

    def _pdu(self):
        kind, _, length = struct.unpack(">BBI", self._read(6))
        return kind, self._read(length)

    def _message(self):
        """The next message's command fields (its data set, if any, read and dropped)."""
        command, fields, need_data = bytearray(), None, False
        while True:
            kind, body = self._pdu()
            if kind != 0x04:
                raise ConnectionError("unexpected PDU type %d" % kind)
            at = 0
            while at < len(body):
                (length,) = struct.unpack_from(">I", body, at)
                header = body[at + 5]
                if header & 1:
                    command += body[at + 6:at + 4 + length]
                    if header & 2:
                        fields = _parse_command(bytes(command))
                        need_data = struct.unpack("<H", fields[0x0800])[0] != 0x0101
                elif header & 2:
                    need_data = False
                at += 4 + length
            if fields is not None and not need_data:
                return fields

    def _request(self, field, sop_class, identifier, extra=None):
        self.message_id += 1
        fields = {0x0002: _uid(sop_class.encode()), 0x0100: _us(field),
                  0x0110: _us(self.message_id), 0x0700: _us(0),
                  0x0800: _us(0x0101 if identifier is None else 0)}
        if field == C_ECHO_RQ:
            del fields[0x0700]  # C-ECHO-RQ has no Priority
        fields.update(extra or {})
        pc_id = self.contexts[sop_class]
        values = [(0x03, _command(fields))]
        if identifier is not None:
            values.append((0x02, encode_identifier(identifier)))
        pdvs = b""
        for control, value in values:
            pdvs += struct.pack(">IBB", len(value) + 2, pc_id, control) + value
        self.sock.sendall(struct.pack(">BBI", 0x04, 0, len(pdvs)) + pdvs)
        pending = 0
        while True:
            fields = self._message()
            status = struct.unpack("<H", fields[0x0900])[0]
            if status not in PENDING:
                return pending, status, fields
            pending += 1

    def echo(self):
        """One C-ECHO (the association must propose Verification); returns its status."""
        _, status, _ = self._request(C_ECHO_RQ, VERIFICATION, None)
        return status

    def find(self, sop_class, identifier):
        """One C-FIND; returns (matches, final status)."""
        matches, status, _ = self._request(C_FIND_RQ, sop_class, identifier)
        return matches, status

    def move(self, sop_class, identifier, destination):
        """One C-MOVE; returns (final status, completed, failed) sub-operations."""
        _, status, fields = self._request(
            C_MOVE_RQ, sop_class, identifier,
            {0x0600: destination.encode().ljust(16)[:16]})
        count = lambda e: struct.unpack("<H", fields[e])[0] if e in fields else 0
        return status, count(0x1021), count(0x1022)

    def release(self):
        self.sock.sendall(struct.pack(">BBI", 0x05, 0, 4) + b"\0" * 4)
        try:
            self._pdu()
        except ConnectionError:
            pass
        self.sock.close()
