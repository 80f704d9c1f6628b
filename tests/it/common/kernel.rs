//! A Jupyter client for tests: starts the real `sparselab kernel` process
//! with a connection file and talks to it over ZeroMQ (jupyter-zmq-client's
//! client sockets), as Jupyter does.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use jupyter_protocol::{
    ConnectionInfo, ExecuteRequest, JupyterMessage, JupyterMessageContent, KernelInfoRequest,
    Transport,
};
use jupyter_zmq_client::{
    create_client_control_connection, create_client_heartbeat_connection,
    create_client_iopub_connection, create_client_shell_connection_with_identity,
    peer_identity_for_session, ClientControlConnection, ClientHeartbeatConnection,
    ClientIoPubConnection, ClientShellConnection,
};
use tokio::time::timeout;

/// Five free TCP ports on the loopback interface.
pub fn free_ports() -> Vec<u16> {
    // Held together so that the five differ; released before the kernel binds.
    let listeners: Vec<TcpListener> = (0..5)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Writes a connection file (as Jupyter does) in `dir`.
pub fn connection_file(dir: &Path) -> (PathBuf, ConnectionInfo) {
    let p = free_ports();
    let info = ConnectionInfo {
        ip: "127.0.0.1".to_string(),
        transport: Transport::TCP,
        shell_port: p[0],
        iopub_port: p[1],
        stdin_port: p[2],
        control_port: p[3],
        hb_port: p[4],
        key: format!("test-key-{}", std::process::id()),
        signature_scheme: "hmac-sha256".to_string(),
        kernel_name: Some("sparselab-rhai".to_string()),
    };
    let path = dir.join("kernel-connection.json");
    std::fs::write(&path, serde_json::to_string(&info).unwrap()).unwrap();
    (path, info)
}

/// Starts `sparselab kernel --connection-file FILE`.
pub fn spawn_kernel(file: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sparselab"))
        .args(["kernel", "--connection-file"])
        .arg(file)
        .spawn()
        .expect("start sparselab kernel")
}

/// What one execute request produced.
#[derive(Debug)]
pub struct Executed {
    /// The `execute_reply`.
    pub reply: jupyter_protocol::ExecuteReply,
    /// Every iopub message whose parent is the request, up to `idle`.
    pub outputs: Vec<JupyterMessageContent>,
}

impl Executed {
    /// The text of the `stream` messages named `name` ("stdout"/"stderr").
    pub fn stream(&self, name: &str) -> String {
        self.outputs
            .iter()
            .filter_map(|m| match m {
                JupyterMessageContent::StreamContent(s) => {
                    let n = serde_json::to_value(&s.name).unwrap();
                    (n == name).then(|| s.text.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// The data of the `execute_result` as a JSON object (MIME type → data).
    pub fn result(&self) -> Option<serde_json::Value> {
        self.outputs.iter().find_map(|m| match m {
            JupyterMessageContent::ExecuteResult(r) => Some(serde_json::to_value(&r.data).unwrap()),
            _ => None,
        })
    }

    /// The data of every `display_data`.
    pub fn displays(&self) -> Vec<serde_json::Value> {
        self.outputs
            .iter()
            .filter_map(|m| match m {
                JupyterMessageContent::DisplayData(d) => {
                    Some(serde_json::to_value(&d.data).unwrap())
                }
                _ => None,
            })
            .collect()
    }

    /// The `error` output, if any.
    pub fn error(&self) -> Option<jupyter_protocol::ErrorOutput> {
        self.outputs.iter().find_map(|m| match m {
            JupyterMessageContent::ErrorOutput(e) => Some(e.clone()),
            _ => None,
        })
    }
}

/// A client connected to a running kernel.
pub struct Client {
    pub shell: ClientShellConnection,
    pub control: ClientControlConnection,
    pub iopub: ClientIoPubConnection,
    pub heartbeat: ClientHeartbeatConnection,
}

const WAIT: Duration = Duration::from_secs(120);

impl Client {
    /// Connects to the kernel `info` describes and waits until it answers on
    /// shell and publishes on iopub (a SUB socket misses what was published
    /// before it was connected, so the client asks until it hears back).
    pub async fn connect(info: &ConnectionInfo) -> Client {
        let session = format!("test-session-{}", std::process::id());
        let identity = peer_identity_for_session(&session).unwrap();
        let shell = create_client_shell_connection_with_identity(info, &session, identity)
            .await
            .unwrap();
        let control = create_client_control_connection(info, &session)
            .await
            .unwrap();
        let iopub = create_client_iopub_connection(info, "", &session)
            .await
            .unwrap();
        let heartbeat = create_client_heartbeat_connection(info).await.unwrap();
        let mut c = Client {
            shell,
            control,
            iopub,
            heartbeat,
        };
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < WAIT, "the kernel never answered");
            let req: JupyterMessage = KernelInfoRequest {}.into();
            c.shell.send(req).await.unwrap();
            let Ok(reply) = timeout(Duration::from_secs(2), c.shell.read()).await else {
                continue;
            };
            assert!(matches!(
                reply.unwrap().content,
                JupyterMessageContent::KernelInfoReply(_)
            ));
            // Some status message on iopub means the subscription is live.
            let mut heard = false;
            while let Ok(Ok(m)) = timeout(Duration::from_millis(300), c.iopub.read()).await {
                if matches!(m.content, JupyterMessageContent::Status(_)) {
                    heard = true;
                }
            }
            if heard {
                return c;
            }
        }
    }

    /// Sends `content` on shell and returns the reply and the request's iopub
    /// messages up to its `idle` status.
    pub async fn request(
        &mut self,
        content: impl Into<JupyterMessageContent>,
    ) -> (JupyterMessage, Vec<JupyterMessageContent>) {
        let req = JupyterMessage::new(content, None);
        let id = req.header.msg_id.clone();
        self.shell.send(req).await.unwrap();
        let reply = timeout(WAIT, self.shell.read())
            .await
            .expect("shell reply in time")
            .unwrap();
        let outputs = self.outputs_of(&id).await;
        (reply, outputs)
    }

    /// The iopub messages whose parent is `id`, up to its `idle` status.
    pub async fn outputs_of(&mut self, id: &str) -> Vec<JupyterMessageContent> {
        let mut outputs = Vec::new();
        loop {
            let m = timeout(WAIT, self.iopub.read())
                .await
                .expect("iopub message in time")
                .unwrap();
            if m.parent_header.as_ref().map(|h| h.msg_id.as_str()) != Some(id) {
                continue;
            }
            if let JupyterMessageContent::Status(s) = &m.content {
                if serde_json::to_value(&s.execution_state).unwrap() == "idle" {
                    return outputs;
                }
                continue;
            }
            outputs.push(m.content);
        }
    }

    /// Runs one cell.
    pub async fn execute(&mut self, code: &str) -> Executed {
        let (reply, outputs) = self.request(ExecuteRequest::new(code.to_string())).await;
        match reply.content {
            JupyterMessageContent::ExecuteReply(reply) => Executed { reply, outputs },
            other => panic!("expected an execute_reply, got {other:?}"),
        }
    }

    /// Sends `content` on the control channel and returns the reply.
    pub async fn control(&mut self, content: impl Into<JupyterMessageContent>) -> JupyterMessage {
        let req = JupyterMessage::new(content, None);
        self.control.send(req).await.unwrap();
        timeout(WAIT, self.control.read())
            .await
            .expect("control reply in time")
            .unwrap()
    }
}

/// Waits up to `limit` for `child` to exit; its status, or `None`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}
