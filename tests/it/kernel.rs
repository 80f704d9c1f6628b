//! The Jupyter kernel from a client's side: the real `sparselab kernel`
//! process, a connection file, and ZeroMQ sockets as Jupyter uses them.

use crate::common;
use crate::common::kernel as kernel_client;

use std::time::{Duration, Instant};

use jupyter_protocol::{
    CompleteRequest, InspectRequest, InterruptRequest, IsCompleteRequest, JupyterMessageContent,
    KernelInfoRequest, ReplyStatus, ShutdownRequest,
};
use kernel_client::{connection_file, spawn_kernel, wait_exit, Client};

fn decode_png(data: &serde_json::Value) -> (u32, u32) {
    let b64 = data.as_str().expect("image/png is a base64 string");
    let bytes = base64::decode(b64).expect("valid base64");
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().expect("a PNG");
    let info = reader.info();
    (info.width, info.height)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_serves_cells_completion_inspection_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (file, info) = connection_file(dir.path());
    let start = Instant::now();
    let mut kernel = spawn_kernel(&file);
    let mut c = Client::connect(&info).await;
    eprintln!(
        "kernel ready (kernel_info answered, iopub live) after {:.2}s",
        start.elapsed().as_secs_f64()
    );

    // kernel_info.
    let (reply, _) = c.request(KernelInfoRequest {}).await;
    let JupyterMessageContent::KernelInfoReply(ki) = reply.content else {
        panic!("expected kernel_info_reply");
    };
    assert_eq!(ki.language_info.name, "rhai");
    assert_eq!(ki.implementation, "sparselab");
    // Heartbeat: the kernel echoes a ping.
    tokio::time::timeout(Duration::from_secs(5), c.heartbeat.single_heartbeat())
        .await
        .expect("heartbeat in time")
        .unwrap();

    // Persistent scope, stdout as a stream, the last value as execute_result.
    let r = c
        .execute("let x = 40;\nfn inc(a) { a + 1 }\nprint(\"hello from rhai\");\nx + 2")
        .await;
    assert_eq!(r.reply.status, ReplyStatus::Ok, "{r:?}");
    assert_eq!(r.reply.execution_count.0, 1);
    assert_eq!(r.stream("stdout"), "hello from rhai\n");
    assert_eq!(r.result().unwrap()["text/plain"], "42");
    let r = c.execute("inc(x) * 2").await;
    assert_eq!(r.result().unwrap()["text/plain"], "82");
    // A statement-only cell shows nothing.
    let r = c.execute("let y = x;").await;
    assert!(r.result().is_none() && r.error().is_none());

    // A plot as execute_result (PNG + SVG), and display() mid-cell.
    let r = c
        .execute(
            "let v = vector([1.0, 2.0, 2.5, 3.0, 7.5]);\n\
             display(v);\n\
             plot_histogram(v, #{title: \"scores\", bins: 4})",
        )
        .await;
    assert_eq!(r.reply.status, ReplyStatus::Ok, "{r:?}");
    let data = r.result().expect("an execute_result");
    assert_eq!(decode_png(&data["image/png"]), (800, 500));
    let svg = data["image/svg+xml"].as_str().unwrap();
    roxmltree::Document::parse(svg).expect("the SVG parses");
    assert!(svg.contains("scores"));
    let shown = r.displays();
    assert_eq!(shown.len(), 1);
    assert!(shown[0]["text/html"]
        .as_str()
        .unwrap()
        .contains("Vector&lt;f32&gt; of 5"));
    // A comparison table as HTML; plot_compare as display_data image.
    let r = c
        .execute(
            "let t = compare_table([\"wikitext2\", \"ptb\"]);\n\
             t.add_row(\"dense\", [27.6, 38.9]);\n\
             t.add_row(\"50%\", [28.1, 40.2]);\n\
             display(plot_compare(t, #{title: \"ppl\"}));\n\
             t",
        )
        .await;
    assert_eq!(r.reply.status, ReplyStatus::Ok, "{r:?}");
    assert!(r.result().unwrap()["text/html"]
        .as_str()
        .unwrap()
        .contains("wikitext2"));
    assert_eq!(decode_png(&r.displays()[0]["image/png"]), (800, 500));

    // Progress and eprint-style output arrive as stderr; debug() too lands
    // in a stream.
    let r = c.execute("debug(\"dbg\"); print(\"out\");").await;
    assert!(r.stream("stdout").contains("out"), "{r:?}");

    // Completion: functions, variables, option keys.
    let (reply, _) = c
        .request(CompleteRequest {
            code: "let q = plot_hi".to_string(),
            cursor_pos: 15,
        })
        .await;
    let JupyterMessageContent::CompleteReply(cr) = reply.content else {
        panic!("expected complete_reply");
    };
    assert_eq!(cr.matches, vec!["plot_histogram"]);
    assert_eq!((cr.cursor_start, cr.cursor_end), (8, 15));
    let code = "let p = 1;\nplot_bits(s, #{ti";
    let (reply, _) = c
        .request(CompleteRequest {
            code: code.to_string(),
            cursor_pos: code.chars().count(),
        })
        .await;
    let JupyterMessageContent::CompleteReply(cr) = reply.content else {
        panic!("expected complete_reply");
    };
    assert_eq!(cr.matches, vec!["title"]);
    let (reply, _) = c
        .request(CompleteRequest {
            code: "in".to_string(),
            cursor_pos: 2,
        })
        .await;
    let JupyterMessageContent::CompleteReply(cr) = reply.content else {
        panic!("expected complete_reply");
    };
    assert!(cr.matches.contains(&"inc".to_string()), "{:?}", cr.matches);

    // Inspection: a primitive's :help text, a variable's value.
    let (reply, _) = c
        .request(InspectRequest {
            code: "plot_layers(s, \"avg_bits\")".to_string(),
            cursor_pos: 4,
            detail_level: Some(0),
        })
        .await;
    let JupyterMessageContent::InspectReply(ir) = reply.content else {
        panic!("expected inspect_reply");
    };
    assert!(ir.found);
    let text = serde_json::to_value(&ir.data).unwrap()["text/plain"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        text.contains("plot_layers(summary: Summary, field: string"),
        "{text}"
    );
    assert!(text.contains("per decoder layer"), "{text}");
    let (reply, _) = c
        .request(InspectRequest {
            code: "x + 1".to_string(),
            cursor_pos: 0,
            detail_level: Some(0),
        })
        .await;
    let JupyterMessageContent::InspectReply(ir) = reply.content else {
        panic!("expected inspect_reply");
    };
    let text = serde_json::to_value(&ir.data).unwrap()["text/plain"].clone();
    assert!(text.as_str().unwrap().contains("x: i64 = 40"), "{text}");

    // is_complete: an open bracket continues.
    let (reply, _) = c
        .request(IsCompleteRequest {
            code: "let a = [1,".to_string(),
        })
        .await;
    let v = serde_json::to_value(&reply.content).unwrap();
    assert_eq!(v["status"], "incomplete");

    // An error: reply and output carry the Rhai position, source line and caret.
    let r = c
        .execute("let ok = 1;\nlet bad = ok + no_such_variable;")
        .await;
    assert_eq!(r.reply.status, ReplyStatus::Error);
    let count = r.reply.execution_count.0;
    let e = r.error().expect("an error output");
    let tb = e.traceback.join("\n");
    assert!(e.evalue.contains("no_such_variable"), "{e:?}");
    assert!(tb.contains(&format!("cell[{count}]:2:16")), "{tb}");
    assert!(tb.contains("let bad = ok + no_such_variable;"), "{tb}");
    assert!(tb.contains('^'), "{tb}");
    // … and the kernel keeps serving, with its scope.
    let r = c.execute("x").await;
    assert_eq!(r.result().unwrap()["text/plain"], "40");
    // "Run all": cells queued behind a failing one are aborted, not run.
    let failing = jupyter_protocol::JupyterMessage::new(
        jupyter_protocol::ExecuteRequest {
            stop_on_error: true,
            ..jupyter_protocol::ExecuteRequest::new("x = 1; throw \"stop here\";".to_string())
        },
        None,
    );
    let queued = jupyter_protocol::JupyterMessage::new(
        jupyter_protocol::ExecuteRequest::new("x = 2;".to_string()),
        None,
    );
    c.shell.send(failing).await.unwrap();
    c.shell.send(queued).await.unwrap();
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let reply = c.shell.read().await.unwrap();
        let JupyterMessageContent::ExecuteReply(er) = reply.content else {
            panic!("expected execute_reply");
        };
        statuses.push(er.status);
    }
    assert_eq!(statuses, vec![ReplyStatus::Error, ReplyStatus::Aborted]);
    // Later requests run again (the queued `x = 2` did not).
    let r = c.execute("x").await;
    assert_eq!(r.result().unwrap()["text/plain"], "1");
    let r = c.execute("x = 40; x").await;
    assert_eq!(r.result().unwrap()["text/plain"], "40");
    // :help works as in the REPL.
    let r = c.execute(":help plot_xy").await;
    assert!(
        r.stream("stdout")
            .contains("plot_xy(xs: array, ys: array, options: map) -> Plot"),
        "{r:?}"
    );

    // Shutdown ends the process.
    let reply = c.control(ShutdownRequest { restart: false }).await;
    assert!(matches!(
        reply.content,
        JupyterMessageContent::ShutdownReply(ref s) if !s.restart
    ));
    let status = wait_exit(&mut kernel, Duration::from_secs(10)).expect("the kernel exits");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_interrupts_a_long_primitive_and_restarts() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let model = fixtures.join("models/opt-tiny");
    let data = fixtures.join("data/wikitext2/wiki.test.raw");
    let dir = tempfile::tempdir().unwrap();
    let (file, info) = connection_file(dir.path());
    let mut kernel = spawn_kernel(&file);
    let mut c = Client::connect(&info).await;

    let r = c
        .execute(&format!(
            "let m = load_model({:?});\nlet data = {:?};\nlet n = 0;",
            model.to_string_lossy(),
            data.to_string_lossy()
        ))
        .await;
    assert_eq!(r.reply.status, ReplyStatus::Ok, "{r:?}");
    // One evaluation, timed, so the interrupt can be judged against it.
    let t = Instant::now();
    let r = c
        .execute("eval_ppl(m, data, #{seqlen: 128, nsamples: 16, quiet: true})")
        .await;
    assert_eq!(r.reply.status, ReplyStatus::Ok, "{r:?}");
    let one = t.elapsed();

    // One evaluation over every window of the test text: a single primitive
    // call far longer than the 16-window one. An interrupt while it runs (by
    // message on the control channel, then by SIGINT as Jupyter sends in the
    // kernelspec's signal mode) stops the primitive itself and the cell.
    let long = "n += 1;\neval_ppl(m, data, #{seqlen: 128, quiet: true})";
    for how in ["interrupt_request", "SIGINT"] {
        let req = jupyter_protocol::JupyterMessage::new(
            jupyter_protocol::ExecuteRequest::new(long.to_string()),
            None,
        );
        let id = req.header.msg_id.clone();
        c.shell.send(req).await.unwrap();
        tokio::time::sleep(one + Duration::from_millis(500)).await;
        let t = Instant::now();
        if how == "SIGINT" {
            unsafe { libc::kill(kernel.id() as libc::pid_t, libc::SIGINT) };
        } else {
            let reply = c.control(InterruptRequest {}).await;
            assert!(matches!(
                reply.content,
                JupyterMessageContent::InterruptReply(_)
            ));
        }
        let reply = tokio::time::timeout(Duration::from_secs(60), c.shell.read())
            .await
            .expect("the interrupted cell replies")
            .unwrap();
        let stopped = t.elapsed();
        let JupyterMessageContent::ExecuteReply(er) = reply.content else {
            panic!("expected execute_reply");
        };
        assert_eq!(er.status, ReplyStatus::Error);
        let outputs = c.outputs_of(&id).await;
        let e = outputs
            .iter()
            .find_map(|m| match m {
                JupyterMessageContent::ErrorOutput(e) => Some(e.clone()),
                _ => None,
            })
            .expect("an error output");
        assert!(e.evalue.contains("interrupted"), "{e:?}");
        // The whole evaluation takes over 100 evaluations of 16 windows; the
        // primitive stopped within about one.
        assert!(
            stopped < one + Duration::from_secs(2),
            "{how}: stopped after {stopped:?} (16 windows take {one:?})"
        );
        eprintln!(
            "{how}: eval_ppl stopped {stopped:?} after the interrupt (16 windows take {one:?})"
        );
    }
    // The session survives an interrupt, with its variables.
    let r = c.execute("n").await;
    assert_eq!(r.result().unwrap()["text/plain"], "2");

    // Restart as Jupyter does it: shutdown_request with restart, the process
    // ends, a new one starts on the same connection file with a fresh scope.
    let reply = c.control(ShutdownRequest { restart: true }).await;
    assert!(matches!(
        reply.content,
        JupyterMessageContent::ShutdownReply(ref s) if s.restart
    ));
    let status = wait_exit(&mut kernel, Duration::from_secs(10)).expect("the kernel exits");
    assert!(status.success(), "{status:?}");
    drop(c);
    let mut kernel = spawn_kernel(&file);
    let mut c = Client::connect(&info).await;
    let r = c.execute("n").await;
    assert_eq!(r.reply.status, ReplyStatus::Error, "{r:?}");
    let r = c.execute("1 + 1").await;
    assert_eq!(r.result().unwrap()["text/plain"], "2");
    c.control(ShutdownRequest { restart: false }).await;
    wait_exit(&mut kernel, Duration::from_secs(10)).expect("the kernel exits");
}
