"""The storage server: accepts runs over gRPC and writes them with the HDF5 core.

Never imports JAX: it needs only numpy, h5py and grpc.
"""

from trajstore.server.app import ServerHandle, create_server, serve
from trajstore.server.config import Limits, ServerConfig

__all__ = ["Limits", "ServerConfig", "ServerHandle", "create_server", "serve"]
