"""The public API's registration with parsers that never raise: bytes that are not a valid request (corrupt
wire format, a string field that is not UTF-8) arrive at the servicer as `Unparseable`, which it answers
with INVALID_ARGUMENT. With the generated parsers grpc would end such a call with UNKNOWN, naming the
exception type."""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError

from vita.assistant.v1 import assistant_pb2

SERVICE = assistant_pb2.DESCRIPTOR.services_by_name["Assistant"].full_name


class Unparseable:
    """A request message whose bytes did not parse; `message` says why, without quoting them."""

    def __init__(self, type_name: str, error: DecodeError):
        reason = "a text field is not valid UTF-8" if "UTF-8" in str(error) else "the bytes are not a valid protobuf message"
        self.message = f"the {type_name} could not be parsed: {reason}"


def _lenient(message_type):
    type_name = message_type.DESCRIPTOR.name

    def parse(data: bytes):
        try:
            return message_type.FromString(data)
        except DecodeError as error:
            return Unparseable(type_name, error)

    return parse


def add_assistant_to_server(servicer, server: grpc.aio.Server) -> None:
    pb = assistant_pb2
    unary = grpc.unary_unary_rpc_method_handler
    handlers = {
        "CreateSession": unary(servicer.CreateSession, request_deserializer=_lenient(pb.CreateSessionRequest),
                               response_serializer=pb.CreateSessionResponse.SerializeToString),
        "GetSession": unary(servicer.GetSession, request_deserializer=_lenient(pb.GetSessionRequest),
                            response_serializer=pb.GetSessionResponse.SerializeToString),
        "DeleteSession": unary(servicer.DeleteSession, request_deserializer=_lenient(pb.DeleteSessionRequest),
                               response_serializer=pb.DeleteSessionResponse.SerializeToString),
        "Converse": grpc.stream_stream_rpc_method_handler(
            servicer.Converse, request_deserializer=_lenient(pb.ClientEvent),
            response_serializer=pb.ServerEvent.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
