//! The Rust objects scripts hold: `Model`, `Calibration` and `Layer` handles.
//!
//! Handles are cheap to clone (Rhai clones on every assignment) and share their
//! object: a `Model` is an `Arc<RwLock<Model>>`, a `Calibration` an
//! `Arc<Mutex<…>>`, a `Layer` a slot holding the decoder layer under work until
//! it is committed.
//!
//! Sequential semantics: a calibration yields one layer at a time. Asking for
//! the next layer (the next turn of `for layer in calib.layers()`,
//! `calib.next_layer()`) or ending the loop commits the previous one: its
//! compressed weights go into the model and the compressed layer runs over the
//! windows to make the next layer's inputs. A layer left open by a `break` is
//! committed by the next of those calls, by `calib.commit()`, or before anything
//! reads the model (`eval_ppl`). Lock order: calibration, then model, then layer.

use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use anyhow::Result;
use rhai::{Array, Dynamic, EvalAltResult, Position};

use crate::calibrate::{Calibration, LayerWork};
use crate::model::Model;
use crate::report::LinearReport;
use crate::runtime::device::{device_name, dtype_name};
use crate::runtime::progress::Progress;

type R<T> = Result<T, Box<EvalAltResult>>;

/// An anyhow error as a script error (with its whole context chain). An
/// interruption ([`crate::runtime::interrupt`]) ends the script as the engine's own
/// Ctrl-C check does: `ErrorTerminated`, which `try`/`catch` cannot swallow.
/// The flag stays set, so that even a `catch` around a script function that
/// called the primitive (Rhai lets that one catch it) stops at its next step,
/// where the engine clears it; a front end clears it when the input ends
/// ([`super::session::Session::eval`], the REPL).
pub(crate) fn script_err(e: anyhow::Error) -> Box<EvalAltResult> {
    if crate::runtime::interrupt::is_interrupted(&e) {
        return Box::new(EvalAltResult::ErrorTerminated(
            crate::runtime::interrupt::Interrupted.to_string().into(),
            Position::NONE,
        ));
    }
    Box::new(EvalAltResult::ErrorRuntime(
        format!("{e:#}").into(),
        Position::NONE,
    ))
}

fn poisoned() -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        "an earlier failure (a panic) left this object unusable; load it again".into(),
        Position::NONE,
    ))
}

/// A loaded model, shared between the script, its calibrations and evaluations.
#[derive(Clone)]
pub struct ModelHandle {
    inner: Arc<ModelShared>,
}

struct ModelShared {
    model: RwLock<Model>,
    spec: String,
    /// Calibrations of this model, to commit their open layer before a read.
    calibrations: Mutex<Vec<Weak<Mutex<CalibState>>>>,
}

impl ModelHandle {
    /// Wraps a loaded model; `spec` is how it was named.
    pub fn new(model: Model, spec: &str) -> Self {
        Self {
            inner: Arc::new(ModelShared {
                model: RwLock::new(model),
                spec: spec.to_string(),
                calibrations: Mutex::new(Vec::new()),
            }),
        }
    }
    /// The spec it was loaded from.
    pub fn spec(&self) -> &str {
        &self.inner.spec
    }
    /// Reads the model as it is (without committing open layers; see [`Self::settled`]).
    pub fn read(&self) -> R<RwLockReadGuard<'_, Model>> {
        self.inner.model.read().map_err(|_| poisoned())
    }
    /// Writes the model.
    pub fn write(&self) -> R<RwLockWriteGuard<'_, Model>> {
        self.inner.model.write().map_err(|_| poisoned())
    }
    /// Commits every open layer of this model's calibrations, then reads it.
    pub fn settled(&self) -> R<RwLockReadGuard<'_, Model>> {
        let calibs: Vec<_> = {
            let mut list = self.inner.calibrations.lock().map_err(|_| poisoned())?;
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for c in calibs {
            c.lock().map_err(|_| poisoned())?.commit_pending()?;
        }
        self.read()
    }
    /// Runs `f` on the settled model (every open layer committed) and its most
    /// recent calibration that is still alive (`None` when it has none): what
    /// `save` needs for `compression.json`.
    pub fn with_latest_calibration<T>(
        &self,
        f: impl FnOnce(&Model, Option<&Calibration>) -> T,
    ) -> R<T> {
        let m = self.settled()?;
        let latest = {
            let list = self.inner.calibrations.lock().map_err(|_| poisoned())?;
            list.iter().rev().find_map(Weak::upgrade)
        };
        match latest {
            Some(state) => {
                let s = state.lock().map_err(|_| poisoned())?;
                Ok(f(&m, Some(&s.calib)))
            }
            None => Ok(f(&m, None)),
        }
    }
    /// Whether two handles hold the same model.
    pub fn same(&self, other: &ModelHandle) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
    /// `Model(spec: arch, N layers, hidden H, dtype on device)`.
    pub fn describe(&self) -> String {
        match self.read() {
            Ok(m) => format!(
                "Model({}: {}, {} layers, hidden {}, {} on {})",
                self.spec(),
                m.arch().as_str(),
                m.num_layers(),
                m.hidden_size(),
                dtype_name(m.dtype()),
                device_name(m.device())
            ),
            Err(_) => format!("Model({}: unusable)", self.spec()),
        }
    }
}

/// The state of one calibration run.
pub struct CalibState {
    calib: Calibration,
    model: ModelHandle,
    /// The layer yielded last and not yet committed.
    pending: Option<LayerSlot>,
    progress: Option<Progress>,
    dataset: String,
}

/// A decoder layer under work; `None` once committed.
type LayerSlot = Arc<Mutex<Option<LayerWork>>>;

impl CalibState {
    /// Commits the open layer, if any.
    fn commit_pending(&mut self) -> R<()> {
        let Some(slot) = self.pending.take() else {
            return Ok(());
        };
        let work = slot.lock().map_err(|_| poisoned())?.take();
        if let Some(work) = work {
            let mut model = self.model.write()?;
            self.calib.commit(&mut model, work).map_err(script_err)?;
            if let Some(p) = &mut self.progress {
                p.inc(1);
            }
        }
        Ok(())
    }

    /// Commits the open layer and brings the next one, or `None` after the last.
    fn advance(&mut self) -> R<Option<LayerHandle>> {
        self.commit_pending()?;
        let work = {
            let model = self.model.read()?;
            self.calib.next_layer(&model).map_err(script_err)?
        };
        let Some(work) = work else {
            if let Some(p) = self.progress.take() {
                p.finish();
                // Once, when the last layer is committed: a compression run
                // that computed widths and quantized nothing ends in an error.
                let reports = &self.calib.reports;
                let quantized = reports.iter().filter(|r| r.avg_bits.is_some()).count();
                super::session::calibration_end_check(reports.len(), quantized)
                    .map_err(|m| Box::new(EvalAltResult::ErrorRuntime(m.into(), Position::NONE)))?;
            }
            return Ok(None);
        };
        let handle = LayerHandle {
            index: work.index,
            linears: work.linears().iter().map(|s| s.to_string()).collect(),
            slot: Arc::new(Mutex::new(Some(work))),
        };
        self.pending = Some(handle.slot.clone());
        Ok(Some(handle))
    }
}

/// A calibration run over a model (see the module docs for its semantics).
#[derive(Clone)]
pub struct CalibHandle {
    state: Arc<Mutex<CalibState>>,
}

impl CalibHandle {
    /// Starts a calibration of `model` (see [`Calibration::new`]).
    pub fn new(model: &ModelHandle, calib: Calibration, dataset: &str) -> R<Self> {
        let layers = model
            .read()?
            .num_layers()
            .saturating_sub(calib.next_index());
        let quiet = calib.opts.quiet;
        let state = Arc::new(Mutex::new(CalibState {
            calib,
            model: model.clone(),
            pending: None,
            progress: Some(Progress::new("calibrate", layers as u64, quiet)),
            dataset: dataset.to_string(),
        }));
        model
            .inner
            .calibrations
            .lock()
            .map_err(|_| poisoned())?
            .push(Arc::downgrade(&state));
        Ok(Self { state })
    }

    fn lock(&self) -> R<MutexGuard<'_, CalibState>> {
        self.state.lock().map_err(|_| poisoned())
    }

    /// Commits the open layer and yields the next, or `None` after the last.
    pub fn next_layer(&self) -> R<Option<LayerHandle>> {
        self.lock()?.advance()
    }
    /// Commits the open layer, if any.
    pub fn commit(&self) -> R<()> {
        self.lock()?.commit_pending()
    }
    /// The model it calibrates.
    pub fn model(&self) -> R<ModelHandle> {
        Ok(self.lock()?.model.clone())
    }
    /// Reports of every linear compressed so far, including the open layer's.
    pub fn reports(&self) -> R<Vec<LinearReport>> {
        let state = self.lock()?;
        let mut out = state.calib.reports.clone();
        if let Some(slot) = &state.pending {
            if let Some(work) = slot.lock().map_err(|_| poisoned())?.as_ref() {
                out.extend(work.reports.iter().cloned());
            }
        }
        Ok(out)
    }
    /// Runs `f` on the calibration.
    pub fn with<T>(&self, f: impl FnOnce(&Calibration) -> T) -> R<T> {
        Ok(f(&self.lock()?.calib))
    }
    /// The calibration dataset as given.
    pub fn dataset(&self) -> R<String> {
        Ok(self.lock()?.dataset.clone())
    }
    /// An iterator over the remaining layers with the commit semantics above.
    pub fn layers(&self) -> LayerIter {
        LayerIter {
            calib: self.clone(),
        }
    }
}

/// `calib.layers()`: iterable in a `for` loop.
#[derive(Clone)]
pub struct LayerIter {
    calib: CalibHandle,
}

impl IntoIterator for LayerIter {
    type Item = R<LayerHandle>;
    type IntoIter = LayerIterState;
    fn into_iter(self) -> LayerIterState {
        LayerIterState {
            calib: self.calib,
            done: false,
        }
    }
}

/// The running iterator of [`LayerIter`].
pub struct LayerIterState {
    calib: CalibHandle,
    done: bool,
}

impl Iterator for LayerIterState {
    type Item = R<LayerHandle>;
    fn next(&mut self) -> Option<R<LayerHandle>> {
        if self.done {
            return None;
        }
        match self.calib.next_layer() {
            Ok(Some(l)) => Some(Ok(l)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// One decoder layer during calibration.
#[derive(Clone)]
pub struct LayerHandle {
    /// Decoder layer index.
    pub index: usize,
    /// Names of its linears in the reference's order.
    pub linears: Vec<String>,
    slot: LayerSlot,
}

impl LayerHandle {
    /// Runs `f` on the layer while it is open, or fails saying it was committed.
    pub fn with<T>(&self, f: impl FnOnce(&mut LayerWork) -> Result<T>) -> R<T> {
        let mut guard = self.slot.lock().map_err(|_| poisoned())?;
        match guard.as_mut() {
            Some(work) => f(work).map_err(script_err),
            None => Err(Box::new(EvalAltResult::ErrorRuntime(
                format!(
                    "layer {} is already committed (the next layer was requested, its loop \
                     ended, or the model was read): work on a layer inside its loop turn",
                    self.index
                )
                .into(),
                Position::NONE,
            ))),
        }
    }
    /// The linears as a script array.
    pub fn linears_array(&self) -> Array {
        self.linears
            .iter()
            .map(|s| Dynamic::from(s.clone()))
            .collect()
    }
}
