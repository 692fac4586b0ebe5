//! The page's side of the worker: starts it, sends requests, and turns its replies into state.
//! A worker that crashes is replaced, and the page says what happened.

use std::cell::{Cell, RefCell};

use leptos::prelude::*;
use wasm_bindgen::prelude::*;
use web_sys::{ErrorEvent, MessageEvent, Worker, WorkerOptions, WorkerType};

use super::{storage, AdapterFiles, Progress, State};
use crate::message::{bytes, pack, unpack, Attached};
use crate::protocol::{Reply, Request, Side, ADAPTER_CONFIG, ADAPTER_WEIGHTS};

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
    /// Counts workers started, so events still queued from a replaced worker are ignored.
    static GENERATION: Cell<u32> = const { Cell::new(0) };
}

/// Starts a worker (its wasm loads from `worker.js`, beside the page).
pub fn spawn(state: State) {
    let options = WorkerOptions::new();
    options.set_type(WorkerType::Module);
    let worker = match Worker::new_with_options("./worker.js", &options) {
        Ok(worker) => worker,
        Err(e) => return state.fail(format!("cannot start the model worker: {}", crate::message::js_error(&e))),
    };
    let generation = GENERATION.with(|g| g.get() + 1);
    GENERATION.set(generation);
    let current = move || GENERATION.get() == generation;
    let on_message =
        Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| match unpack::<Reply>(&event.data()) {
            Ok((reply, files)) if current() => apply(state, reply, files),
            Ok(_) => {}
            Err(message) => state.fail(message),
        });
    worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();
    // A panic first posts its message (Reply::Failed), then surfaces here as "unreachable":
    // by then this worker has been replaced and the better message is on screen.
    let on_error = Closure::<dyn FnMut(ErrorEvent)>::new(move |event: ErrorEvent| {
        event.prevent_default();
        if current() {
            crashed(state, &event.message());
        }
    });
    worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    on_error.forget();
    WORKER.with(|w| *w.borrow_mut() = Some(worker));
}

/// A new worker (after "Use CPU" changed, or a crash): the model must be loaded again.
pub fn restart(state: State) {
    if let Some(old) = WORKER.with(|w| w.borrow_mut().take()) {
        old.terminate();
    }
    state.backend.set("starting…".into());
    state.model.set(None);
    state.adapter_in_use.set(false);
    state.busy.set(false);
    state.progress.set(None);
    spawn(state);
}

fn crashed(state: State, why: &str) {
    state.fail(format!("{why} — the model worker was restarted; load the model again"));
    restart(state);
}

/// Sends the user's `request` (with `files`) to the worker; the last message goes.
pub fn send(state: State, request: &Request, files: Attached) {
    if !matches!(request, Request::Stop) {
        state.error.set(None);
    }
    post(state, request, files);
}

/// Sends `request` without touching the message bar (for requests the page makes itself).
fn post(state: State, request: &Request, files: Attached) {
    if !matches!(request, Request::Stop | Request::Start { .. }) {
        state.busy.set(true);
    }
    let (data, transfer) = pack(request, &files);
    let sent = WORKER.with(|w| w.borrow().as_ref().map(|w| w.post_message_with_transfer(&data, &transfer)));
    match sent {
        Some(Ok(())) => {}
        Some(Err(e)) => state.fail(format!("cannot reach the model worker: {}", crate::message::js_error(&e))),
        None => state.fail("the model worker is not running: reload the page"),
    }
}

fn apply(state: State, reply: Reply, files: Attached) {
    // A link's adapter is shown but not kept over the user's own.
    let keep_adapter = !super::link::loading_adapter();
    super::link::on_reply(state, &reply);
    match reply {
        Reply::WorkerReady => post(state, &Request::Start { force_cpu: state.force_cpu.get_untracked() }, Vec::new()),
        Reply::Started { backend } => state.backend.set(backend),
        Reply::Progress { what, done, total } => {
            state.progress.update(|p| *p = Some(Progress::next(p.take(), what, done, total)))
        }
        Reply::ModelLoaded { summary, budget } => {
            state.model.set(Some(summary));
            state.budget.set(budget);
            state.adapter_in_use.set(false);
            state.output_base.set(String::new());
            state.output_adapter.set(String::new());
            apply_restored_adapter(state);
        }
        Reply::AdapterReady { summary, config_json } => {
            let weights = files.iter().find(|(n, _)| n == ADAPTER_WEIGHTS).map(|(_, b)| bytes(b)).unwrap_or_default();
            let adapter = AdapterFiles { summary, config_json, weights };
            if keep_adapter {
                storage::save_adapter(&adapter);
            }
            state.adapter.set(Some(adapter));
            state.adapter_in_use.set(true);
        }
        Reply::Token { side, text } => output(state, side).update(|o| o.push_str(&text)),
        Reply::Generated { side, tokens, tokens_per_s, first_token_ms } => {
            let stats = if side == Side::Base { state.stats_base } else { state.stats_adapter };
            stats.set(format!(
                "{tokens} tokens · {tokens_per_s:.1} tokens/s · first token after {first_token_ms:.0} ms"
            ));
        }
        Reply::Step { step, total, loss, learning_rate, steps_per_s } => {
            state.losses.update(|l| l.push((step, loss)));
            let what = format!("training: {total} steps");
            state.progress.update(|p| *p = Some(Progress::next(p.take(), what, step as f64, total as f64)));
            state.train_status.set(format!(
                "step {step}/{total} · loss {loss:.4} · lr {learning_rate:.2e} · {steps_per_s:.2} steps/s"
            ));
        }
        Reply::Trained { steps, stopped, budget } => {
            let how = if stopped { "stopped" } else { "done" };
            state.train_status.update(|s| *s = format!("{how} after {steps} steps · {s} · memory budget {budget}"));
        }
        Reply::Idle { memory } => {
            state.busy.set(false);
            state.progress.set(None);
            state.memory.set(memory);
        }
        Reply::Failed { message } => {
            if message.starts_with("the model worker crashed") {
                crashed(state, &message);
            } else {
                state.fail(with_fields(&message));
            }
        }
    }
}

/// Core's messages name settings as config files spell them, in backticks (`max_length`); the
/// page names the fields that set them.
fn with_fields(message: &str) -> String {
    const FIELDS: [(&str, &str); 8] = [
        ("max_length", "Max length"),
        ("learning_rate", "Learning rate"),
        ("per_device_train_batch_size", "Batch size"),
        ("max_steps", "Steps"),
        ("lora_alpha", "LoRA alpha"),
        ("target_modules", "Target modules"),
        ("modules_to_save", "Modules to save"),
        ("temperature", "Temperature"),
    ];
    FIELDS
        .iter()
        .fold(message.to_owned(), |m, (setting, field)| m.replace(&format!("`{setting}`"), &format!("\"{field}\"")))
}

pub fn output(state: State, side: Side) -> RwSignal<String> {
    if side == Side::Base {
        state.output_base
    } else {
        state.output_adapter
    }
}

/// The page's adapter (trained, loaded, or kept from the last session) goes into a freshly loaded
/// model; the worker queues it before anything the user asks next. An adapter made for another
/// base model gets a message.
fn apply_restored_adapter(state: State) {
    if super::link::brings_adapter() {
        return;
    }
    if let Some(adapter) = state.adapter.get_untracked() {
        let files = vec![
            (ADAPTER_CONFIG.to_string(), crate::message::buffer(adapter.config_json.as_bytes())),
            (ADAPTER_WEIGHTS.to_string(), crate::message::buffer(&adapter.weights)),
        ];
        post(state, &Request::LoadAdapter { origin: "last adapter".into() }, files);
    }
}
