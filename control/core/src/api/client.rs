//! The control socket's client: one request, one response line.

use super::{
    is_timeout, read_line, ApiError, Line, Request, Response, IO_TIMEOUT, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES,
};
use std::io::{self, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// A connection to the API for several requests; [`call`] for one.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the socket at `path`, with 30 s read and write timeouts.
    pub fn connect(path: &Path) -> Result<Client, ApiError> {
        let stream = UnixStream::connect(path).map_err(|e| {
            let path = path.to_path_buf();
            match e.kind() {
                io::ErrorKind::NotFound => ApiError::NoSocket { path },
                io::ErrorKind::PermissionDenied => ApiError::PermissionDenied { path },
                io::ErrorKind::ConnectionRefused => ApiError::NotListening { path },
                _ => ApiError::io(format!("connecting to {}", path.display()), e),
            }
        })?;
        let setup = || -> io::Result<UnixStream> {
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            stream.try_clone()
        };
        let writer = setup().map_err(|e| ApiError::io(format!("setting up {}", path.display()), e))?;
        Ok(Client { path: path.to_path_buf(), reader: BufReader::new(stream), writer })
    }

    /// Changes the read and write timeouts (30 s by default), e.g. for a
    /// capture, which the gateway answers when it ends.
    pub fn set_timeout(&mut self, d: std::time::Duration) -> Result<(), ApiError> {
        let set = || -> io::Result<()> {
            self.writer.set_read_timeout(Some(d))?;
            self.writer.set_write_timeout(Some(d))
        };
        set().map_err(|e| ApiError::io(format!("setting up {}", self.path.display()), e))
    }

    /// Sends `req` and waits for its response. A request the gateway could
    /// not carry out is `Ok(Response::Error { .. })`; `Err` is for failures
    /// to talk to it.
    pub fn call(&mut self, req: &Request) -> Result<Response, ApiError> {
        let mut text = serde_json::to_string(req).map_err(|e| ApiError::Protocol(format!("encoding: {e}")))?;
        if text.len() > MAX_REQUEST_BYTES {
            return Err(ApiError::TooLarge { len: text.len() });
        }
        text.push('\n');
        let io_err = |what: &'static str, e: io::Error, path: &Path| {
            if is_timeout(&e) {
                ApiError::Timeout { what }
            } else {
                ApiError::io(format!("{what} on {}", path.display()), e)
            }
        };
        self.writer.write_all(text.as_bytes()).map_err(|e| io_err("sending the request", e, &self.path))?;
        self.writer.flush().map_err(|e| io_err("sending the request", e, &self.path))?;
        match read_line(&mut self.reader, MAX_RESPONSE_BYTES) {
            Ok(Line::Data(bytes)) => serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::Protocol(format!("bad response from the gateway: {e}"))),
            Ok(Line::Eof) => Err(ApiError::Protocol("the gateway closed the connection without answering".into())),
            Ok(Line::TooLong) => {
                Err(ApiError::Protocol(format!("response larger than {} MiB", MAX_RESPONSE_BYTES / (1024 * 1024))))
            }
            Err(e) => Err(io_err("the response", e, &self.path)),
        }
    }
}

/// Sends one request to the API at `path` and returns its response (30 s
/// timeouts). See [`Client::call`] for what is `Ok` and what is `Err`.
pub fn call(path: &Path, req: &Request) -> Result<Response, ApiError> {
    Client::connect(path)?.call(req)
}
