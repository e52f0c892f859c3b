"""The signed webhook receiver: an ASGI app that forwards Tencent callbacks to the queue."""
