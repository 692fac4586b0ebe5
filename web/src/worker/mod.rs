//! The Web Worker that runs the model, so the page never freezes: it receives
//! [`Request`]s, queues them, runs them one at a time on a [`Session`], and posts [`Reply`]s
//! back (tokens as they come, one message per training step). `Stop` is served at once: it ends
//! the running job at its next token or step.

mod blob;
mod fetch;
mod session;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use js_sys::Promise;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{DedicatedWorkerGlobalScope, MessageChannel, MessageEvent};

use crate::message::{pack, unpack, Attached};
use crate::protocol::{Reply, Request};
use session::Session;

thread_local! {
    static SESSION: RefCell<Option<Session>> = const { RefCell::new(None) };
    static QUEUE: RefCell<VecDeque<(Request, Attached)>> = const { RefCell::new(VecDeque::new()) };
    static BUSY: Cell<bool> = const { Cell::new(false) };
    static STOP: Cell<bool> = const { Cell::new(false) };
}

/// Entry point of `worker.js`.
#[wasm_bindgen]
pub fn start_worker() {
    // A panic ends this wasm instance; tell the page why so it can say so and start a new worker.
    std::panic::set_hook(Box::new(|info| {
        post(&Reply::Failed { message: format!("the model worker crashed: {info}") }, Vec::new());
        console_error_panic_hook::hook(info);
    }));
    let handler = Closure::<dyn FnMut(MessageEvent)>::new(|event: MessageEvent| on_message(event.data()));
    scope().set_onmessage(Some(handler.as_ref().unchecked_ref()));
    handler.forget();
    post(&Reply::WorkerReady, Vec::new());
}

fn scope() -> DedicatedWorkerGlobalScope {
    js_sys::global().unchecked_into()
}

pub(crate) fn post(reply: &Reply, files: Attached) {
    let (data, transfer) = pack(reply, &files);
    let _ = scope().post_message_with_transfer(&data, &transfer);
}

fn on_message(data: JsValue) {
    let (request, files) = match unpack::<Request>(&data) {
        Ok(message) => message,
        Err(message) => return post(&Reply::Failed { message }, Vec::new()),
    };
    if matches!(request, Request::Stop) {
        STOP.set(true);
        return;
    }
    QUEUE.with(|q| q.borrow_mut().push_back((request, files)));
    if !BUSY.replace(true) {
        spawn_local(drain_queue());
    }
}

/// Runs queued jobs until none is left, then tells the page the worker is idle.
async fn drain_queue() {
    while let Some((request, files)) = QUEUE.with(|q| q.borrow_mut().pop_front()) {
        STOP.set(false);
        let mut session = SESSION.take();
        if let Err(message) = run(&mut session, request, files).await {
            post(&Reply::Failed { message }, Vec::new());
        }
        SESSION.set(session);
    }
    BUSY.set(false);
    let memory = SESSION.with(|s| memory_line(s.borrow().as_ref()));
    post(&Reply::Idle { memory }, Vec::new());
}

async fn run(session: &mut Option<Session>, request: Request, files: Attached) -> Result<(), String> {
    if let Request::Start { force_cpu } = request {
        let started = Session::start(force_cpu).await;
        post(&Reply::Started { backend: started.backend.clone() }, Vec::new());
        *session = Some(started);
        return Ok(());
    }
    let session = session.as_mut().ok_or("the worker was asked for work before it started")?;
    session.handle(request, files).await.map_err(|e| e.to_string())
}

/// Whether the page pressed Stop since the current job began.
pub(crate) fn stop_requested() -> bool {
    STOP.get()
}

/// Lets the worker's event loop run (so a Stop message gets through) before continuing. A
/// message to itself rather than `setTimeout(0)`, which browsers clamp to 4 ms when nested: that
/// was a third of a token's time on the CPU backend.
pub(crate) async fn yield_now() {
    let promise = Promise::new(&mut |resolve, _| {
        let Ok(channel) = MessageChannel::new() else {
            let _ = resolve.call0(&JsValue::NULL);
            return;
        };
        channel.port1().set_onmessage(Some(&resolve));
        let _ = channel.port2().post_message(&JsValue::NULL);
    });
    let _ = JsFuture::from(promise).await;
}

pub(crate) fn now_ms() -> f64 {
    scope().performance().map_or_else(js_sys::Date::now, |p| p.now())
}

/// The worker's WebAssembly memory and what the loaded model holds.
fn memory_line(session: Option<&Session>) -> String {
    let heap = wasm_bindgen::memory().unchecked_into::<js_sys::WebAssembly::Memory>().buffer();
    let heap_mib = heap.unchecked_into::<js_sys::ArrayBuffer>().byte_length() as f64 / 1048576.0;
    let model = session.map(Session::memory_line).unwrap_or_default();
    format!("worker memory {heap_mib:.0} MiB{model}")
}
