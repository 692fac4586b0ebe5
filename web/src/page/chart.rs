//! The live loss curve: one SVG polyline, redrawn as each step's loss arrives.

use leptos::prelude::*;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 220.0;
const MARGIN: f64 = 36.0;

/// SVG `points` for `losses`, steps along x and loss along y (axes fitted to the data).
pub fn polyline_points(losses: &[(usize, f64)]) -> String {
    if losses.is_empty() {
        return String::new();
    }
    let last_step = losses.iter().map(|&(s, _)| s).max().unwrap_or(1).max(2) as f64;
    let (low, high) = losses.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &(_, l)| (lo.min(l), hi.max(l)));
    let span = (high - low).max(1e-6);
    losses
        .iter()
        .map(|&(step, loss)| {
            let x = MARGIN + (step as f64 - 1.0) / (last_step - 1.0) * (WIDTH - 2.0 * MARGIN);
            let y = MARGIN + (high - loss) / span * (HEIGHT - 2.0 * MARGIN);
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[component]
pub fn LossChart(losses: RwSignal<Vec<(usize, f64)>>) -> impl IntoView {
    let bound = move |pick_high: bool| {
        losses
            .with(|l| l.iter().map(|&(_, x)| x).reduce(if pick_high { f64::max } else { f64::min }))
            .map(|x| format!("{x:.3}"))
            .unwrap_or_default()
    };
    view! {
        <svg id="loss-chart" class="chart" viewBox=format!("0 0 {WIDTH} {HEIGHT}") data-points=move || losses.with(Vec::len).to_string()>
            <rect x=MARGIN y=MARGIN width=WIDTH - 2.0 * MARGIN height=HEIGHT - 2.0 * MARGIN class="plot-area"></rect>
            <text x="4" y=MARGIN + 4.0 class="axis">{move || bound(true)}</text>
            <text x="4" y=HEIGHT - MARGIN class="axis">{move || bound(false)}</text>
            <text x=WIDTH / 2.0 y=HEIGHT - 8.0 class="axis">{move || format!("training loss over {} steps", losses.with(Vec::len))}</text>
            <polyline class="loss" points=move || losses.with(|l| polyline_points(l))></polyline>
        </svg>
    }
}
