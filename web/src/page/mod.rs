//! The page (leptos, client-side rendered): load a model, generate, fine-tune, download. All
//! model work happens in the worker ([`bridge`]); the page only keeps what it shows.

mod bridge;
mod chart;
mod download;
mod finetune;
mod generate;
mod link;
mod load;
mod storage;

use leptos::prelude::*;
use wasm_bindgen::prelude::*;

pub use bridge::send;

/// An adapter the page can offer for download: from training, loading, or the last session.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterFiles {
    pub summary: String,
    pub config_json: String,
    pub weights: Vec<u8>,
}

/// What is being done, bytes or steps done of the total, and since when (for rate and ETA).
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub what: String,
    pub done: f64,
    pub total: f64,
    since_ms: f64,
    since_done: f64,
}

impl Progress {
    /// The next report of `previous`'s work, or a new one when `what` changed.
    pub fn next(previous: Option<Progress>, what: String, done: f64, total: f64) -> Progress {
        let now = js_sys::Date::now();
        match previous.filter(|p| p.what == what && done >= p.done) {
            Some(p) => Progress { done, total, ..p },
            None => Progress { what, done, total, since_ms: now, since_done: done },
        }
    }

    /// Units per second and seconds left, once there is a rate to speak of.
    pub fn rate_and_eta(&self) -> Option<(f64, f64)> {
        let seconds = (js_sys::Date::now() - self.since_ms) / 1000.0;
        let rate = (self.done - self.since_done) / seconds;
        (seconds > 0.5 && rate > 0.0).then(|| (rate, (self.total - self.done).max(0.0) / rate))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tab {
    Generate,
    FineTune,
}

/// Everything the page shows, as signals (cheap to copy into event handlers).
#[derive(Clone, Copy)]
pub struct State {
    pub backend: RwSignal<String>,
    pub force_cpu: RwSignal<bool>,
    /// Load models with 4-bit Linear layers (QLoRA).
    pub four_bit: RwSignal<bool>,
    pub busy: RwSignal<bool>,
    pub progress: RwSignal<Option<Progress>>,
    pub error: RwSignal<Option<String>>,
    pub model: RwSignal<Option<String>>,
    /// What fits in memory with the loaded model.
    pub budget: RwSignal<String>,
    pub adapter: RwSignal<Option<AdapterFiles>>,
    /// Whether the worker has `adapter` in use (a restored one is applied once a model loads).
    pub adapter_in_use: RwSignal<bool>,
    pub output_base: RwSignal<String>,
    pub output_adapter: RwSignal<String>,
    pub stats_base: RwSignal<String>,
    pub stats_adapter: RwSignal<String>,
    pub examples: RwSignal<String>,
    pub losses: RwSignal<Vec<(usize, f64)>>,
    pub train_status: RwSignal<String>,
    pub memory: RwSignal<String>,
    pub tab: RwSignal<Tab>,
    /// Where a link's run is (`#status`: `done` at its end).
    pub status: RwSignal<String>,
}

impl State {
    fn new() -> Self {
        State {
            backend: RwSignal::new("starting…".into()),
            force_cpu: RwSignal::new(false),
            four_bit: RwSignal::new(false),
            busy: RwSignal::new(false),
            progress: RwSignal::new(None),
            error: RwSignal::new(None),
            model: RwSignal::new(None),
            budget: RwSignal::new(String::new()),
            adapter: RwSignal::new(None),
            adapter_in_use: RwSignal::new(false),
            output_base: RwSignal::new(String::new()),
            output_adapter: RwSignal::new(String::new()),
            stats_base: RwSignal::new(String::new()),
            stats_adapter: RwSignal::new(String::new()),
            examples: RwSignal::new(String::new()),
            losses: RwSignal::new(Vec::new()),
            train_status: RwSignal::new(String::new()),
            memory: RwSignal::new(String::new()),
            tab: RwSignal::new(Tab::Generate),
            status: RwSignal::new(String::new()),
        }
    }

    /// Shows a problem in the page's message bar (never a dead page).
    pub fn fail(&self, message: impl Into<String>) {
        self.error.set(Some(message.into()));
    }
}

/// Entry point of `index.html`.
#[wasm_bindgen]
pub fn start_page() {
    console_error_panic_hook::set_once();
    let state = State::new();
    if let Some(link) = link::from_location(state) {
        state.force_cpu.set(link.force_cpu);
        state.four_bit.set(link.four_bit);
    }
    bridge::spawn(state);
    storage::restore(state);
    leptos::mount::mount_to_body(move || view! { <App state=state/> });
}

#[component]
fn App(state: State) -> impl IntoView {
    let tab_button = move |tab: Tab, id: &'static str, label: &'static str| {
        view! {
            <button id=id class:active=move || state.tab.get() == tab on:click=move |_| state.tab.set(tab)>{label}</button>
        }
    };
    view! {
        <header>
            <h1>"Ember"</h1>
            <p class="tagline">"LoRA fine-tuning of BLOOM models, in this page, on your device."</p>
            <div class="backend-line">
                "Running on: " <span id="backend">{move || state.backend.get()}</span>
                <label class="force-cpu">
                    <input id="force-cpu" type="checkbox" prop:checked=move || state.force_cpu.get()
                        on:change=move |ev| { state.force_cpu.set(event_target_checked(&ev)); bridge::restart(state); }/>
                    " Use CPU"
                </label>
                <span id="memory" class="muted">{move || state.memory.get()}</span>
            </div>
            <p id="status" class="muted">{move || state.status.get()}</p>
        </header>
        <Show when=move || state.error.get().is_some()>
            <div id="error" class="error" role="alert">
                <span>{move || state.error.get().unwrap_or_default()}</span>
                <button class="close" on:click=move |_| state.error.set(None)>"×"</button>
            </div>
        </Show>
        <load::LoadPanel state=state/>
        <nav class="tabs">
            {tab_button(Tab::Generate, "tab-generate", "Generate")}
            {tab_button(Tab::FineTune, "tab-finetune", "Fine-tune")}
        </nav>
        <div class:hidden=move || state.tab.get() != Tab::Generate><generate::GeneratePanel state=state/></div>
        <div class:hidden=move || state.tab.get() != Tab::FineTune><finetune::FineTunePanel state=state/></div>
    }
}

/// A labelled text field bound to `value`.
#[component]
fn Field(id: &'static str, label: &'static str, value: RwSignal<String>) -> impl IntoView {
    view! {
        <label class="field">
            <span>{label}</span>
            <input id=id prop:value=move || value.get() on:input=move |ev| value.set(event_target_value(&ev))/>
        </label>
    }
}

/// `text` parsed as a number, or a message naming the field.
fn number<T: std::str::FromStr>(text: &str, field: &str) -> Result<T, String> {
    text.trim().parse().map_err(|_| format!("{field}: \"{text}\" is not a valid number"))
}
