"""A RIS for the tests: an MLLP server built on the `hl7` package.

usage: hl7_ris.py PORT OUT.jsonl ACK[,ACK...]

Every message received is parsed by `hl7.parse` and written to OUT.jsonl as one JSON
object of field values read through the package's accessors (unescaped). The answers are
the ACK codes given, in order, the last one repeating, built with `Message.create_ack`.

When `hl7apy` is installed, every message is also parsed and validated by it at its STRICT
level against the HL7 v2.5.1 ORU_R01 structure (groups found, every segment, field, data
type and length checked): the record's `strict` is "valid" or the validator's error.
"""
import asyncio
import json
import sys

import hl7
from hl7.mllp import start_hl7_server

PORT = int(sys.argv[1])
OUT = sys.argv[2]
ACKS = sys.argv[3].split(",")

KEYS = [
    "MSH.F3", "MSH.F4", "MSH.F5", "MSH.F6", "MSH.F7", "MSH.F9.R1.C1", "MSH.F9.R1.C2",
    "MSH.F9.R1.C3", "MSH.F10", "MSH.F11", "MSH.F12", "MSH.F18",
    "PID.F3", "PID.F5.R1.C1", "PID.F5.R1.C2", "PID.F5.R1.C3", "PID.F5.R1.C4", "PID.F5.R1.C8",
    "PID.F5.R2.C1", "PID.F5.R2.C2", "PID.F5.R2.C8", "PID.F5.R3.C1", "PID.F5.R3.C2",
    "PID.F5.R3.C8", "PID.F7",
    "PID.F8", "ORC.F1", "ORC.F2", "OBR.F2", "OBR.F3.R1.C1", "OBR.F4.R1.C5", "OBR.F7",
    "OBR.F18", "OBR.F25", "TQ1.F9", "ZDS.F1.R1.C1", "ZDS.F1.R1.C2", "ZDS.F1.R1.C3",
    "ZDS.F1.R1.C4", "OBX1.F2", "OBX1.F3.R1.C1", "OBX1.F3.R1.C2", "OBX1.F3.R1.C3",
    "OBX1.F3.R1.C4", "OBX1.F3.R1.C6", "OBX1.F5", "OBX1.F8", "OBX1.F11", "OBX2.F2",
    "OBX2.F3.R1.C1", "OBX2.F5", "OBX2.F11", "OBX3.F2", "OBX3.F5",
]

count = 0

try:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message
    from hl7apy.validation import Validator
except ImportError:
    parse_message = None


def strict(text):
    """Validates one message with hl7apy at STRICT: "valid" or the error."""
    if parse_message is None:
        return None
    try:
        parsed = parse_message(
            text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True
        )
        Validator.validate(parsed, reference=None)
        return "valid"
    except Exception as e:  # every hl7apy error is a finding of the validator
        return f"{type(e).__name__}: {e}"



async def handle(reader, writer):
    global count
    try:
        while not writer.is_closing():
            msg = await reader.readmessage()
            record = {"segments": [str(seg[0]) for seg in msg], "strict": strict(str(msg))}
            for key in KEYS:
                try:
                    record[key] = msg.unescape(str(msg[key]))
                except (KeyError, IndexError):
                    record[key] = None
            with open(OUT, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            code = ACKS[min(count, len(ACKS) - 1)]
            count += 1
            writer.writemessage(msg.create_ack(code))
            await writer.drain()
    except asyncio.IncompleteReadError:
        pass
    finally:
        writer.close()


async def main():
    server = await start_hl7_server(handle, "127.0.0.1", PORT, encoding="utf-8")
    async with server:
        await server.serve_forever()


asyncio.run(main())
