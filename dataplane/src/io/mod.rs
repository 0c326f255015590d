//! The I/O edge: TAP devices, AF_PACKET sockets and readiness polling.
