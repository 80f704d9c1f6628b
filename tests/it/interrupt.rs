//! Ctrl-C inside a primitive: the one flag (`sparselab::runtime::interrupt::INTERRUPT`,
//! the same as `sparselab::script::INTERRUPT`) set from another thread stops a
//! running calibration, compression or evaluation with "interrupted (Ctrl-C)",
//! nothing half-written, and the session goes on. The tests share the global
//! flag, so they hold one lock while they run.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use sparselab::calibrate::{CalibOptions, Calibration};
use sparselab::eval::{perplexity, PplOptions};
use sparselab::model::{LoadOptions, Model};
use sparselab::runtime::interrupt::{is_interrupted, INTERRUPT};
use sparselab::script::session::Session;
use sparselab::script::ScriptOptions;

static SERIAL: Mutex<()> = Mutex::new(());

fn load(fx: &Path) -> Model {
    let dir = fx.join("models/opt-tiny");
    Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn the_script_flag_is_the_core_flag() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    sparselab::script::INTERRUPT.store(true, Ordering::SeqCst);
    assert!(sparselab::runtime::interrupt::check().is_err());
    INTERRUPT.store(false, Ordering::SeqCst);
    assert!(sparselab::runtime::interrupt::check().is_ok());
}

#[test]
fn an_interrupted_calibration_writes_nothing_and_can_go_on() {
    let Some(fx) = common::fixtures() else { return };
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cache = tempfile::tempdir().unwrap();
    let mut model = load(&fx);
    let opts = CalibOptions {
        dataset: fx
            .join("data/wikitext2/wiki.valid.raw")
            .to_string_lossy()
            .into_owned(),
        nsamples: 4,
        seqlen: Some(64),
        quiet: true,
        cache: Some(cache.path().to_path_buf()),
        ..CalibOptions::default()
    };
    let mut calib = Calibration::new(&model, opts).unwrap();
    let work = calib.next_layer(&model).unwrap().unwrap();
    assert_eq!(entries(cache.path()).len(), 1);
    let before: Vec<_> = model.layer(0).unwrap().linears()[0]
        .weight()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    // Interrupted at the commit: the model keeps layer 0 as it was.
    INTERRUPT.store(true, Ordering::SeqCst);
    let e = calib.commit(&mut model, work).unwrap_err();
    assert!(is_interrupted(&e), "{e:#}");
    assert_eq!(e.to_string(), "interrupted (Ctrl-C)");
    // Interrupted before collecting statistics: no cache entry appears.
    let e = calib.next_layer(&model).err().unwrap();
    assert!(is_interrupted(&e), "{e:#}");
    INTERRUPT.store(false, Ordering::SeqCst);
    assert_eq!(entries(cache.path()).len(), 1);
    assert_eq!(calib.next_index(), 0, "the layer was not committed");
    let after: Vec<_> = model.layer(0).unwrap().linears()[0]
        .weight()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(before, after);
    // The calibration carries on from layer 0.
    calib.run(&mut model, |_| Ok(())).unwrap();
    assert_eq!(calib.next_index(), model.num_layers());
}

#[test]
fn evaluation_polls_the_flag() {
    let Some(fx) = common::fixtures() else { return };
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let model = load(&fx);
    let tokens: Vec<u32> = (0..2000).map(|i| (i * 7 % 4000) as u32).collect();
    let opts = PplOptions {
        seqlen: Some(64),
        quiet: true,
        ..PplOptions::default()
    };
    INTERRUPT.store(true, Ordering::SeqCst);
    let e = perplexity(&model, &tokens, &opts).unwrap_err();
    INTERRUPT.store(false, Ordering::SeqCst);
    assert!(is_interrupted(&e), "{e:#}");
    assert!(perplexity(&model, &tokens, &opts).unwrap().ppl.is_finite());
}

#[test]
fn ctrl_c_from_another_thread_stops_a_running_primitive_and_the_session_goes_on() {
    let Some(fx) = common::fixtures() else { return };
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut session = Session::new(ScriptOptions {
        quiet: true,
        ..ScriptOptions::default()
    });
    let model = fx.join("models/opt-tiny");
    let test = fx.join("data/wikitext2/wiki.test.raw");
    let _ = session
        .eval(
            "setup",
            &format!("let m = load_model({:?}); let n = 1;", model.display()),
        )
        .unwrap();
    // The whole test split in windows of 64 tokens: far longer than the delay.
    let setter = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(400));
        INTERRUPT.store(true, Ordering::SeqCst);
    });
    let start = std::time::Instant::now();
    let err = session
        .eval(
            "sweep.rhai",
            &format!(
                "let p = eval_ppl(m, {:?}, #{{seqlen: 64, batch: 4}}); n = 2; p",
                test.display()
            ),
        )
        .unwrap_err();
    setter.join().unwrap();
    let seconds = start.elapsed().as_secs_f64();
    assert!(err.contains("interrupted (Ctrl-C)"), "{err}");
    // The primitive saw the flag and the script seeing it cleared it.
    assert!(!INTERRUPT.load(Ordering::SeqCst));
    // The statement after the interrupted call did not run, and the session
    // goes on with its state.
    let n = session.eval("after", "n").unwrap();
    assert_eq!(n.as_int().unwrap(), 1);
    let p = session
        .eval(
            "after",
            &format!(
                "eval_ppl(m, {:?}, #{{seqlen: 64, nsamples: 2}})",
                test.display()
            ),
        )
        .unwrap();
    assert!(p.as_float().unwrap().is_finite());
    eprintln!("interrupted after {seconds:.2} s");
}

#[test]
fn a_catch_around_a_function_does_not_swallow_the_interruption() {
    let Some(fx) = common::fixtures() else { return };
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut session = Session::new(ScriptOptions {
        quiet: true,
        ..ScriptOptions::default()
    });
    let model = fx.join("models/opt-tiny");
    let test = fx.join("data/wikitext2/wiki.test.raw");
    let _ = session
        .eval(
            "setup",
            &format!(
                "let m = load_model({:?}); let n = 1;\n\
                 fn long(m) {{ eval_ppl(m, {:?}, #{{seqlen: 64, batch: 4}}) }}",
                model.display(),
                test.display()
            ),
        )
        .unwrap();
    let setter = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(400));
        INTERRUPT.store(true, Ordering::SeqCst);
    });
    // Rhai lets a catch around a script function see the primitive's error;
    // the still-set flag stops the script at its next step all the same.
    let err = session
        .eval(
            "catch.rhai",
            "try { long(m); } catch (e) { n = 5; }\nn = 3;\nn = 4;",
        )
        .unwrap_err();
    setter.join().unwrap();
    assert!(err.contains("interrupted (Ctrl-C)"), "{err}");
    assert!(
        !INTERRUPT.load(Ordering::SeqCst),
        "the front end cleared it"
    );
    let n = session.eval("after", "n").unwrap().as_int().unwrap();
    assert!(
        n == 1 || n == 5,
        "the script went on after the catch: n = {n}"
    );
    assert_eq!(
        session.eval("after", "40 + 2").unwrap().as_int().unwrap(),
        42
    );
}
