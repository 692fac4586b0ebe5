//! The Generate tab: a prompt, the Human/Assistant template, sampling controls, and the base
//! model's and the adapter's answers side by side, streamed token by token.

use leptos::prelude::*;

use super::{number, send, Field, State};
use crate::protocol::{GenerateRequest, Request};

/// The demo model's first training question: the demo fine-tune teaches it an answer.
const DEMO_PROMPT: &str = include_str!("../../../demo/question.txt");

#[component]
pub fn GeneratePanel(state: State) -> impl IntoView {
    let defaults = GenerateRequest::default();
    let link = super::link::current();
    let prompt = RwSignal::new(link.as_ref().and_then(|l| l.prompt.clone()).unwrap_or(DEMO_PROMPT.trim().to_string()));
    let template = RwSignal::new(link.as_ref().map_or(defaults.template, |l| l.template));
    let sample = RwSignal::new(link.as_ref().map_or(defaults.sample, |l| !l.greedy));
    let temperature = RwSignal::new(defaults.temperature.to_string());
    let top_k = RwSignal::new(defaults.top_k.to_string());
    let top_p = RwSignal::new(defaults.top_p.to_string());
    let max_new_tokens = RwSignal::new(link.as_ref().map_or(defaults.max_new_tokens, |l| l.max_new_tokens).to_string());
    let seed = RwSignal::new(defaults.seed.to_string());
    let with_adapter = RwSignal::new(defaults.with_adapter);

    let request = move || -> Result<GenerateRequest, String> {
        Ok(GenerateRequest {
            prompt: prompt.get_untracked(),
            template: template.get_untracked(),
            sample: sample.get_untracked(),
            temperature: number(&temperature.get_untracked(), "temperature")?,
            top_k: number(&top_k.get_untracked(), "top-k")?,
            top_p: number(&top_p.get_untracked(), "top-p")?,
            max_new_tokens: number(&max_new_tokens.get_untracked(), "max new tokens")?,
            seed: number(&seed.get_untracked(), "seed")?,
            with_adapter: with_adapter.get_untracked() && state.adapter_in_use.get_untracked(),
        })
    };
    let generate = move |_| match request() {
        Ok(request) => {
            for output in [state.output_base, state.output_adapter, state.stats_base, state.stats_adapter] {
                output.set(String::new());
            }
            send(state, &Request::Generate(request), Vec::new());
        }
        Err(message) => state.fail(message),
    };
    let checkbox = move |id: &'static str, label: &'static str, value: RwSignal<bool>| {
        view! {
            <label class="check">
                <input id=id type="checkbox" prop:checked=move || value.get() on:change=move |ev| value.set(event_target_checked(&ev))/>
                {label}
            </label>
        }
    };
    view! {
        <section class="panel">
            <h2>"2 · Generate"</h2>
            <textarea id="prompt" rows="3" prop:value=move || prompt.get() on:input=move |ev| prompt.set(event_target_value(&ev))></textarea>
            <div class="row">
                {checkbox("template", " Human/Assistant template", template)}
                {checkbox("sample", " Sample (off: greedy)", sample)}
                {checkbox("with-adapter", " Also with the adapter", with_adapter)}
            </div>
            <div class="row fields">
                <Field id="temperature" label="Temperature" value=temperature/>
                <Field id="top-k" label="Top-k" value=top_k/>
                <Field id="top-p" label="Top-p" value=top_p/>
                <Field id="max-new-tokens" label="Max new tokens" value=max_new_tokens/>
                <Field id="seed" label="Seed" value=seed/>
            </div>
            <div class="row">
                <button id="generate" class="primary" disabled=move || state.busy.get() || state.model.get().is_none() on:click=generate>"Generate"</button>
                <button id="stop-generate" disabled=move || !state.busy.get() on:click=move |_| send(state, &Request::Stop, Vec::new())>"Stop"</button>
            </div>
            <div class="outputs">
                <div class="output">
                    <h3>"Base model"</h3>
                    <pre id="output-base">{move || state.output_base.get()}</pre>
                    <p id="stats-base" class="muted">{move || state.stats_base.get()}</p>
                </div>
                <div class="output">
                    <h3>"Base + adapter"</h3>
                    <pre id="output-adapter">{move || state.output_adapter.get()}</pre>
                    <p id="stats-adapter" class="muted">{move || state.stats_adapter.get()}</p>
                </div>
            </div>
        </section>
    }
}
