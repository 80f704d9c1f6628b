//! `sparselab kernel`: a native Jupyter kernel for the Rhai environment.
//!
//! Jupyter starts `sparselab kernel --connection-file FILE` (see
//! [`spec::install`]); the kernel binds the five sockets the file names and
//! speaks the Jupyter wire protocol through `jupyter-zmq-client` (ZeroMQ in
//! pure Rust) and `jupyter-protocol` (the message types).
//!
//! - Cells run in one [`Session`], the engine and scope the REPL uses: a
//!   variable or function defined in one cell serves the next ones. `:help`,
//!   `:vars`, `:load` and `:reset` work as in the REPL.
//! - Output on standard output and error (Rhai's `print` and `debug`,
//!   progress lines) becomes `stream` messages ([`capture`]).
//! - A cell's last value is its `execute_result`: a `Plot` as `image/png`
//!   and `image/svg+xml`, a `Summary`, comparison table or `Vector` as
//!   `text/html` and `text/plain`, anything else as the text the REPL prints.
//!   `display(x)` shows a value in the middle of a cell (`display_data`).
//! - An error is an `error` output and reply whose traceback is the text the
//!   command line prints: the message, `cell[N]:line:column`, the source line and
//!   a caret.
//! - `complete_request` and `inspect_request` use the REPL's completion and
//!   `:help` ([`crate::script::assist`]).
//! - `interrupt_request` and SIGINT (Jupyter's default interrupt mode) set
//!   [`crate::script::INTERRUPT`]: the cell stops at its next step.
//! - After a failed cell (with `stop_on_error`, the default), execute
//!   requests the client had already queued behind it are answered `aborted`.
//! - `shutdown_request` ends the process, with or without `restart` (Jupyter
//!   restarts a kernel by starting a new process).
//!
//! Shell requests are served one at a time, as ipykernel does; a cell runs on
//! a worker thread so that the control channel (interrupt, shutdown) and the
//! heartbeat answer while it runs.

pub mod capture;
pub mod spec;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use jupyter_protocol::{
    CodeMirrorMode, CommInfoReply, CompleteReply, ConnectionInfo, DisplayData, ErrorOutput,
    ExecuteInput, ExecuteReply, ExecuteResult, ExecutionCount, HistoryReply, InspectReply,
    InterruptReply, IsCompleteReply, IsCompleteReplyStatus, JupyterMessage, JupyterMessageContent,
    KernelInfoReply, LanguageInfo, Media, MediaType, ReplyError, ReplyStatus, ShutdownReply,
    Status, Stdio, StreamContent,
};
use rhai::Dynamic;
use tokio::sync::{mpsc as tmpsc, oneshot};

use crate::plot::{CompareTable, Plot, RichDisplay};
use crate::script::assist::{self, Names};
use crate::script::session::{display_text, Session};
use crate::script::{ScriptOptions, INTERRUPT};
use capture::{Capture, Stream};

/// Where messages for the iopub socket go, and the request they answer.
struct Outputs {
    tx: tmpsc::UnboundedSender<JupyterMessage>,
    /// The request whose output is being produced (stream text written
    /// between requests is attributed to the last one).
    parent: Mutex<Option<JupyterMessage>>,
    capture: Mutex<Option<Arc<Capture>>>,
}

impl Outputs {
    fn send(&self, content: impl Into<JupyterMessageContent>) {
        let parent = self.parent.lock().unwrap_or_else(|e| e.into_inner());
        let msg = JupyterMessage::new(content, parent.as_ref());
        // The receiver lives as long as the kernel.
        let _ = self.tx.send(msg);
    }

    fn drain(&self) {
        let capture = self
            .capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(c) = capture {
            c.drain();
        }
    }

    fn log(&self, text: &str) {
        match self
            .capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            Some(c) => c.log(text),
            None => eprintln!("sparselab kernel: {text}"),
        }
    }
}

/// The MIME bundle of a value: rich for the types that have one, else the
/// text the REPL prints.
pub fn bundle_of(engine: &rhai::Engine, v: &Dynamic) -> Vec<(&'static str, String)> {
    if let Some(p) = v.read_lock::<Plot>() {
        return p.mime_bundle();
    }
    if let Some(s) = v.read_lock::<crate::report::summary::Summary>() {
        return RichDisplay::mime_bundle(&*s);
    }
    if let Some(t) = v.read_lock::<CompareTable>() {
        return t.mime_bundle();
    }
    if let Some(vec) = v.read_lock::<crate::script::vector::Vector>() {
        return RichDisplay::mime_bundle(&*vec);
    }
    vec![("text/plain", display_text(engine, v))]
}

fn media(bundle: Vec<(&'static str, String)>) -> Media {
    Media::new(
        bundle
            .into_iter()
            .map(|(mime, data)| match mime {
                "image/png" => MediaType::Png(data),
                "image/svg+xml" => MediaType::Svg(data),
                "text/html" => MediaType::Html(data),
                "text/plain" => MediaType::Plain(data),
                other => MediaType::Other((other.to_string(), data.into())),
            })
            .collect(),
    )
}

/// Work for the thread that owns the session.
enum Job {
    Execute {
        code: String,
        silent: bool,
        done: oneshot::Sender<ExecuteReply>,
    },
    Complete {
        code: String,
        cursor: usize,
        done: oneshot::Sender<CompleteReply>,
    },
    Inspect {
        code: String,
        cursor: usize,
        done: oneshot::Sender<InspectReply>,
    },
}

/// Byte offset of the `chars`-th character (Jupyter counts cursor positions in
/// Unicode code points).
fn byte_offset(text: &str, chars: usize) -> usize {
    text.char_indices()
        .nth(chars)
        .map(|(i, _)| i)
        .unwrap_or(text.len())
}

fn char_count(text: &str, bytes: usize) -> usize {
    text[..bytes].chars().count()
}

/// The session's thread: runs cells, completes and inspects.
struct Worker {
    session: Session,
    names: Names,
    count: usize,
    out: Arc<Outputs>,
}

impl Worker {
    fn new(opts: ScriptOptions, out: Arc<Outputs>) -> Worker {
        let mut session = Session::new(opts);
        add_display(&mut session, out.clone());
        let names = Names::of(&session);
        Worker {
            session,
            names,
            count: 0,
            out,
        }
    }

    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        for job in jobs {
            match job {
                Job::Execute { code, silent, done } => {
                    let reply = self.execute(&code, silent);
                    let _ = done.send(reply);
                }
                Job::Complete { code, cursor, done } => {
                    let pos = byte_offset(&code, cursor);
                    let (start, matches) = self.names.complete(&code, pos);
                    let _ = done.send(CompleteReply {
                        matches,
                        cursor_start: char_count(&code, start),
                        cursor_end: cursor,
                        metadata: Default::default(),
                        status: ReplyStatus::Ok,
                        error: None,
                    });
                }
                Job::Inspect { code, cursor, done } => {
                    let pos = byte_offset(&code, cursor);
                    let text =
                        assist::word_at(&code, pos).and_then(|(a, b)| self.inspect(&code[a..b]));
                    let _ = done.send(InspectReply {
                        found: text.is_some(),
                        data: text
                            .map(|t| Media::new(vec![MediaType::Plain(t)]))
                            .unwrap_or_default(),
                        metadata: Default::default(),
                        status: ReplyStatus::Ok,
                        error: None,
                    });
                }
            }
        }
    }

    /// What `name` is: a variable's type and value, or a function's `:help`.
    fn inspect(&self, name: &str) -> Option<String> {
        if let Some(v) = self.session.scope.get(name) {
            return Some(format!(
                "{name}: {} = {}\n",
                self.session.engine.map_type_name(v.type_name()),
                self.session.display(v)
            ));
        }
        assist::help_for(&self.session, name)
    }

    fn execute(&mut self, code: &str, silent: bool) -> ExecuteReply {
        if !silent {
            self.count += 1;
        }
        let count = ExecutionCount::new(self.count);
        self.out.send(ExecuteInput {
            code: code.to_string(),
            execution_count: count,
        });
        // An interrupt that arrived between cells is not meant for this one.
        INTERRUPT.store(false, Ordering::SeqCst);
        // A panic in a primitive must not take the session thread down (the
        // client would wait forever for the reply): it becomes the cell's error.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_cell(code)))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".to_string());
                Err(format!("error: internal error (panic): {what}\n"))
            });
        INTERRUPT.store(false, Ordering::SeqCst);
        // Every line the cell wrote goes out before its result.
        self.out.drain();
        self.names = Names::of(&self.session);
        match result {
            Ok(Some(value)) => {
                if !silent {
                    self.out.send(ExecuteResult {
                        execution_count: count,
                        data: media(bundle_of(&self.session.engine, &value)),
                        metadata: Default::default(),
                        transient: None,
                    });
                }
                ok_reply(count)
            }
            Ok(None) => ok_reply(count),
            Err(text) => {
                let error = error_of(&text);
                self.out.send(ErrorOutput {
                    ename: error.ename.clone(),
                    evalue: error.evalue.clone(),
                    traceback: error.traceback.clone(),
                });
                ExecuteReply {
                    status: ReplyStatus::Error,
                    execution_count: count,
                    payload: vec![],
                    user_expressions: None,
                    error: Some(Box::new(error)),
                }
            }
        }
    }

    /// Runs a cell: a `:command` or Rhai. `Ok(Some(v))` is a value to show.
    fn run_cell(&mut self, code: &str) -> Result<Option<Dynamic>, String> {
        let trimmed = code.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        if let Some(cmd) = trimmed.strip_prefix(':') {
            let (cmd, arg) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
            let arg = arg.trim();
            let text = match cmd {
                "help" | "h" => assist::help_text(&self.session, arg, "kernel"),
                "vars" => assist::vars_text(&self.session),
                "reset" => {
                    self.session.reset();
                    add_display(&mut self.session, self.out.clone());
                    "session reset: no variables, functions or imports\n".to_string()
                }
                "load" if !arg.is_empty() => {
                    let v = self.session.load_file(Path::new(arg))?;
                    return Ok((!v.is_unit()).then_some(v));
                }
                "load" => "usage: :load FILE\n".to_string(),
                "quit" | "q" | "exit" => {
                    "a notebook ends the kernel with its Shutdown command\n".to_string()
                }
                other => {
                    return Err(format!(
                        "error: unknown command :{other}; commands: {}\n",
                        assist::COMMANDS.join(", ")
                    ))
                }
            };
            self.out.send(StreamContent::stdout(&text));
            return Ok(None);
        }
        let name = format!("cell[{}]", self.count);
        let v = self.session.eval(&name, code)?;
        Ok((!v.is_unit()).then_some(v))
    }
}

fn ok_reply(count: ExecutionCount) -> ExecuteReply {
    ExecuteReply {
        status: ReplyStatus::Ok,
        execution_count: count,
        payload: vec![],
        user_expressions: None,
        error: None,
    }
}

/// A formatted script error as Jupyter's error triple: the traceback is the
/// text the command line prints, line by line.
fn error_of(text: &str) -> ReplyError {
    let first = text.lines().next().unwrap_or("error");
    let evalue = first.strip_prefix("error: ").unwrap_or(first).to_string();
    let interrupted = evalue.contains("interrupted");
    ReplyError {
        ename: if interrupted {
            "Interrupted"
        } else {
            "ScriptError"
        }
        .to_string(),
        evalue,
        traceback: text.trim_end().lines().map(str::to_string).collect(),
    }
}

/// `display(value)`: shows a value in the cell's output while the cell runs.
fn add_display(session: &mut Session, out: Arc<Outputs>) {
    rhai::FuncRegistration::new("display")
        .with_comments([
            "/// Shows `value` in the notebook now (a Plot as an image, a Summary,",
            "/// table or Vector as a table, anything else as text); a cell's last",
            "/// value is shown without it. Only in the Jupyter kernel.",
        ])
        .with_params_info(["value: Dynamic", "()"])
        .register_into_engine(
            &mut session.engine,
            move |ctx: rhai::NativeCallContext, value: Dynamic| {
                // Text printed before this call goes out before the display.
                out.drain();
                out.send(DisplayData::new(media(bundle_of(ctx.engine(), &value))));
            },
        );
}

fn kernel_info() -> KernelInfoReply {
    KernelInfoReply {
        status: ReplyStatus::Ok,
        protocol_version: "5.3".to_string(),
        implementation: "sparselab".to_string(),
        implementation_version: env!("CARGO_PKG_VERSION").to_string(),
        language_info: LanguageInfo {
            name: "rhai".to_string(),
            version: "1".to_string(),
            mimetype: Some("text/x-rhai".to_string()),
            file_extension: Some(".rhai".to_string()),
            // Rhai reads close enough to Rust for highlighting.
            pygments_lexer: Some("rust".to_string()),
            codemirror_mode: Some(CodeMirrorMode::Simple("rust".to_string())),
            nbconvert_exporter: None,
        },
        banner: format!(
            "sparselab {} — Rhai with the sparselab primitives. :help for help.",
            env!("CARGO_PKG_VERSION")
        ),
        help_links: vec![],
        debugger: false,
        error: None,
    }
}

extern "C" fn on_sigint(_: libc::c_int) {
    // Only an atomic store: all a signal handler may safely do here.
    INTERRUPT.store(true, Ordering::SeqCst);
}

/// Runs the kernel for the connection file `path` until a shutdown request.
pub fn run(path: &Path, opts: ScriptOptions) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the connection file {}", path.display()))?;
    let info: ConnectionInfo = serde_json::from_str(&text)
        .with_context(|| format!("parsing the connection file {}", path.display()))?;
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The sockets need little; the cores belong to the numerics (rayon).
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(info, opts))
}

async fn serve(info: ConnectionInfo, opts: ScriptOptions) -> Result<()> {
    use jupyter_zmq_client::{
        create_kernel_control_connection, create_kernel_heartbeat_connection,
        create_kernel_iopub_connection, create_kernel_shell_connection,
        create_kernel_stdin_connection,
    };
    let session_id = uuid_like();
    let err = |what: &'static str| {
        move |e: jupyter_zmq_client::RuntimeError| anyhow::anyhow!("{what}: {e}")
    };
    let mut heartbeat = create_kernel_heartbeat_connection(&info)
        .await
        .map_err(err("binding the heartbeat socket"))?;
    let mut shell = create_kernel_shell_connection(&info, &session_id)
        .await
        .map_err(err("binding the shell socket"))?;
    let mut control = create_kernel_control_connection(&info, &session_id)
        .await
        .map_err(err("binding the control socket"))?;
    // Bound so that clients can connect; the kernel never asks for input.
    let _stdin = create_kernel_stdin_connection(&info, &session_id)
        .await
        .map_err(err("binding the stdin socket"))?;
    let mut iopub = create_kernel_iopub_connection(&info, &session_id)
        .await
        .map_err(err("binding the iopub socket"))?;

    let (tx, mut rx) = tmpsc::unbounded_channel::<JupyterMessage>();
    let out = Arc::new(Outputs {
        tx,
        parent: Mutex::new(None),
        capture: Mutex::new(None),
    });
    let sink_out = out.clone();
    let capture = Capture::start(Arc::new(move |stream, text| {
        let name = match stream {
            Stream::Stdout => Stdio::Stdout,
            Stream::Stderr => Stdio::Stderr,
        };
        sink_out.send(StreamContent { name, text });
    }))
    .context("redirecting standard output and error")?;
    *out.capture.lock().unwrap() = Some(capture);

    let iopub_out = out.clone();
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if let Err(e) = iopub.send(msg).await {
                iopub_out.log(&format!("iopub send failed: {e}"));
            }
        }
    });
    tokio::spawn(async move { while heartbeat.single_heartbeat().await.is_ok() {} });

    // The session lives on its own thread: a cell may run for minutes.
    let (jobs, job_rx) = mpsc::channel::<Job>();
    let worker_out = out.clone();
    std::thread::Builder::new()
        .name("kernel-session".into())
        .spawn(move || Worker::new(opts, worker_out).run(job_rx))?;

    out.send(Status::starting());
    let (shutdown_tx, mut shutdown_rx) = tmpsc::unbounded_channel::<()>();
    let control_out = out.clone();
    tokio::spawn(async move {
        loop {
            let msg = match control.read().await {
                Ok(m) => m,
                Err(e) => {
                    control_out.log(&format!("control read failed: {e}"));
                    continue;
                }
            };
            let reply: Option<JupyterMessage> = match &msg.content {
                JupyterMessageContent::KernelInfoRequest(_) => {
                    Some(kernel_info().as_child_of(&msg))
                }
                JupyterMessageContent::InterruptRequest(_) => {
                    INTERRUPT.store(true, Ordering::SeqCst);
                    Some(InterruptReply::new().as_child_of(&msg))
                }
                JupyterMessageContent::ShutdownRequest(req) => {
                    let reply = ShutdownReply {
                        restart: req.restart,
                        status: ReplyStatus::Ok,
                        error: None,
                    }
                    .as_child_of(&msg);
                    let _ = control.send(reply).await;
                    let _ = shutdown_tx.send(());
                    return;
                }
                _ => None,
            };
            if let Some(r) = reply {
                if let Err(e) = control.send(r).await {
                    control_out.log(&format!("control send failed: {e}"));
                }
            }
        }
    });

    // After a failed cell whose request says stop_on_error, the execute
    // requests queued behind it (a notebook's "run all") are answered
    // `aborted` instead of run, as ipykernel does: they would run on a state
    // the failed cell never made. "Queued" means made by the client before it
    // could have seen the failure: dated before the failed cell's reply.
    let mut abort_before = None;
    loop {
        let msg = if abort_before.is_some() {
            match tokio::time::timeout(Duration::from_millis(20), shell.read()).await {
                Ok(m) => m,
                Err(_) => {
                    abort_before = None;
                    continue;
                }
            }
        } else {
            tokio::select! {
                m = shell.read() => m,
                _ = shutdown_rx.recv() => break,
            }
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                out.log(&format!("shell read failed: {e}"));
                continue;
            }
        };
        let queued = abort_before.is_some_and(|t| msg.header.date < t);
        abort_before = None;
        *out.parent.lock().unwrap() = Some(msg.clone());
        out.send(Status::busy());
        if queued && matches!(msg.content, JupyterMessageContent::ExecuteRequest(_)) {
            // Later requests of the same batch are aborted too.
            abort_before = Some(msg.header.date);
            let reply = ExecuteReply {
                status: ReplyStatus::Aborted,
                execution_count: ExecutionCount::new(0),
                payload: vec![],
                user_expressions: None,
                error: None,
            };
            if let Err(e) = shell.send(reply.as_child_of(&msg)).await {
                out.log(&format!("shell send failed: {e}"));
            }
            out.send(Status::idle());
            continue;
        }
        let reply: Option<JupyterMessage> = match &msg.content {
            JupyterMessageContent::KernelInfoRequest(_) => Some(kernel_info().as_child_of(&msg)),
            JupyterMessageContent::ExecuteRequest(req) => {
                let (done, wait) = oneshot::channel();
                let _ = jobs.send(Job::Execute {
                    code: req.code.clone(),
                    silent: req.silent,
                    done,
                });
                // A shutdown while a cell runs ends the kernel without waiting.
                let r = tokio::select! {
                    r = wait => r.ok(),
                    _ = shutdown_rx.recv() => break,
                };
                let failed = r.as_ref().is_some_and(|r| r.status == ReplyStatus::Error);
                let reply = r.map(|r| r.as_child_of(&msg));
                if req.stop_on_error && failed {
                    abort_before = reply.as_ref().map(|r| r.header.date);
                }
                reply
            }
            JupyterMessageContent::CompleteRequest(req) => {
                let (done, wait) = oneshot::channel();
                let _ = jobs.send(Job::Complete {
                    code: req.code.clone(),
                    cursor: req.cursor_pos,
                    done,
                });
                wait.await.ok().map(|r| r.as_child_of(&msg))
            }
            JupyterMessageContent::InspectRequest(req) => {
                let (done, wait) = oneshot::channel();
                let _ = jobs.send(Job::Inspect {
                    code: req.code.clone(),
                    cursor: req.cursor_pos,
                    done,
                });
                wait.await.ok().map(|r| r.as_child_of(&msg))
            }
            JupyterMessageContent::IsCompleteRequest(req) => Some(
                IsCompleteReply {
                    status: if assist::is_incomplete(&req.code) {
                        IsCompleteReplyStatus::Incomplete
                    } else {
                        IsCompleteReplyStatus::Complete
                    },
                    indent: String::new(),
                }
                .as_child_of(&msg),
            ),
            JupyterMessageContent::HistoryRequest(_) => Some(
                HistoryReply {
                    history: vec![],
                    status: ReplyStatus::Ok,
                    error: None,
                }
                .as_child_of(&msg),
            ),
            JupyterMessageContent::CommInfoRequest(_) => Some(
                CommInfoReply {
                    status: ReplyStatus::Ok,
                    comms: Default::default(),
                    error: None,
                }
                .as_child_of(&msg),
            ),
            _ => None,
        };
        if let Some(r) = reply {
            if let Err(e) = shell.send(r).await {
                out.log(&format!("shell send failed: {e}"));
            }
        }
        out.send(Status::idle());
    }
    // Let the last messages (the shutdown reply, a final status) leave.
    out.drain();
    drop(jobs);
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

/// A random session id (the kernel's side of the message headers).
fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("sparselab-{:x}-{:x}", std::process::id(), nanos)
}
