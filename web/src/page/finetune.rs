//! The Fine-tune tab: examples (pasted, uploaded, or the demo's), LoRA and training settings,
//! Train / Stop, the live loss chart, and the adapter's download.

use leptos::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::HtmlInputElement;

use super::{chart::LossChart, download, number, send, storage, Field, State};
use crate::protocol::{Request, TrainRequest};

const DEMO_EXAMPLES: &str = include_str!("../../../demo/data.jsonl");
/// The demo's recipe, the same file `ember train` uses for its bundled demo.
const DEMO_RECIPE: &str = include_str!("../../../demo/train.toml");

/// A value of the demo recipe (`key = value` lines), lists as comma-separated names.
fn recipe(key: &str) -> String {
    DEMO_RECIPE
        .lines()
        .filter_map(|line| line.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().trim_matches(['[', ']']).replace('"', ""))
        .unwrap_or_default()
}

#[component]
pub fn FineTunePanel(state: State) -> impl IntoView {
    let r = RwSignal::new("8".to_string());
    let alpha = RwSignal::new("16".to_string());
    let targets = RwSignal::new(ember_core::model::bloom::LORA_TARGET_MODULES.join(","));
    let saved = RwSignal::new(String::new());
    let lr = RwSignal::new("0.0003".to_string());
    let steps = RwSignal::new("20".to_string());
    let batch = RwSignal::new("4".to_string());
    let max_length = RwSignal::new("256".to_string());

    let use_demo = move |_| {
        state.examples.set(DEMO_EXAMPLES.to_string());
        storage::save_examples(DEMO_EXAMPLES);
        for (signal, key) in [
            (r, "lora_r"),
            (alpha, "lora_alpha"),
            (targets, "target_modules"),
            (saved, "modules_to_save"),
            (lr, "learning_rate"),
            (batch, "per_device_train_batch_size"),
            (max_length, "max_length"),
        ] {
            signal.set(recipe(key));
        }
        let examples = DEMO_EXAMPLES.lines().filter(|l| !l.trim().is_empty()).count();
        let batch: usize = recipe("per_device_train_batch_size").parse().unwrap_or(8);
        let epochs: f64 = recipe("num_train_epochs").parse().unwrap_or(1.0);
        steps.set(format!("{}", (epochs * examples.div_ceil(batch) as f64).ceil()));
    };
    let validation = Memo::new(move |_| {
        let text = state.examples.get();
        if text.trim().is_empty() {
            return Err(
                "Paste examples as JSON lines or a JSON array, upload a file, or use the demo examples.".to_string()
            );
        }
        crate::examples::parse(&text).map(|e| e.len()).map_err(|e| e.to_string())
    });
    let request = move || -> Result<TrainRequest, String> {
        validation.get_untracked()?;
        Ok(TrainRequest {
            examples: state.examples.get_untracked(),
            r: number(&r.get_untracked(), "LoRA r")?,
            lora_alpha: number(&alpha.get_untracked(), "LoRA alpha")?,
            target_modules: targets.get_untracked(),
            modules_to_save: saved.get_untracked(),
            learning_rate: number(&lr.get_untracked(), "learning rate")?,
            steps: number(&steps.get_untracked(), "steps")?,
            batch_size: number(&batch.get_untracked(), "batch size")?,
            max_length: number(&max_length.get_untracked(), "max length")?,
        })
    };
    let train = move |_| match request() {
        Ok(request) => {
            state.losses.set(Vec::new());
            state.train_status.set("starting…".into());
            send(state, &Request::Train(request), Vec::new());
        }
        Err(message) => state.fail(message),
    };
    let upload = move |ev: leptos::ev::Event| {
        let Some(file) = ev
            .target()
            .and_then(|t| t.dyn_into::<HtmlInputElement>().ok())
            .and_then(|i| i.files())
            .and_then(|f| f.get(0))
        else {
            return;
        };
        spawn_local(async move {
            match JsFuture::from(file.text()).await.map(|t| t.as_string().unwrap_or_default()) {
                Ok(text) => {
                    storage::save_examples(&text);
                    state.examples.set(text);
                }
                Err(e) => state.fail(format!("{}: cannot read: {}", file.name(), crate::message::js_error(&e))),
            }
        });
    };
    view! {
        <section class="panel">
            <h2>"3 · Fine-tune"</h2>
            <div class="row">
                <button id="demo-examples" on:click=use_demo>"Use the demo examples and recipe"</button>
                <label class="file-button">"Upload JSON / JSONL…"
                    <input id="examples-file" type="file" accept=".json,.jsonl" on:change=upload/>
                </label>
            </div>
            <textarea id="examples" rows="8" placeholder="{\"instruction\": \"…\", \"input\": \"\", \"output\": \"…\"} (one per line, or a JSON array)"
                prop:value=move || state.examples.get()
                on:change=move |ev| storage::save_examples(&event_target_value(&ev))
                on:input=move |ev| state.examples.set(event_target_value(&ev))></textarea>
            <p id="examples-status" class="status" class:bad=move || validation.get().is_err()>
                {move || match validation.get() { Ok(n) => format!("{n} examples"), Err(e) => e }}
            </p>
            <div class="row fields">
                <Field id="lora-r" label="LoRA r" value=r/>
                <Field id="lora-alpha" label="LoRA alpha" value=alpha/>
                <Field id="target-modules" label="Target modules (names, or a regex)" value=targets/>
                <Field id="modules-to-save" label="Modules to save" value=saved/>
            </div>
            <div class="row fields">
                <Field id="learning-rate" label="Learning rate" value=lr/>
                <Field id="steps" label="Steps" value=steps/>
                <Field id="batch-size" label="Batch size" value=batch/>
                <Field id="max-length" label="Max length" value=max_length/>
            </div>
            <div class="row">
                <button id="train" class="primary" disabled=move || state.busy.get() || state.model.get().is_none() on:click=train>"Train"</button>
                <button id="stop-train" disabled=move || !state.busy.get() on:click=move |_| send(state, &Request::Stop, Vec::new())>"Stop"</button>
                <span id="train-status" class="status">{move || state.train_status.get()}</span>
            </div>
            <LossChart losses=state.losses/>
            <div class="row">
                <button id="download-zip" disabled=move || state.adapter.get().is_none()
                    on:click=move |_| download::adapter_zip(state)>"Download adapter (.zip)"</button>
                <button id="download-weights" disabled=move || state.adapter.get().is_none()
                    on:click=move |_| download::adapter_file(state, crate::protocol::ADAPTER_WEIGHTS)>"adapter_model.safetensors"</button>
                <button id="download-config" disabled=move || state.adapter.get().is_none()
                    on:click=move |_| download::adapter_file(state, crate::protocol::ADAPTER_CONFIG)>"adapter_config.json"</button>
            </div>
        </section>
    }
}
