"""ExplainPipeline's text, in the reference's exact format (sections, totals, waves).

Assets are listed in topological order within each section; an output's mode prints capitalised
(``mode=Overwrite``) as the reference's Rust ``Debug`` formatting does; the transformations
section is left out when there are none.
"""

from __future__ import annotations

from lakestack_teckel_jobs.document import Pipeline


def explain(pipeline: Pipeline) -> str:
    order = pipeline.schedule.order
    outputs = pipeline.output_keys
    lines = ["=== Pipeline Execution Plan ===\n", "--- Inputs ---"]
    for name in order:
        if name in pipeline.inputs:
            source = pipeline.inputs[name]
            lines.append(f"  [{name}] format={source.format}, path={source.path}")
    lines.append("")
    if pipeline.steps:
        lines.append("--- Transformations ---")
        for name in order:
            if name in pipeline.steps:
                step = pipeline.steps[name]
                lines.append(f"  [{name}] {step.op.title} (from: {', '.join(step.dependencies)})")
        lines.append("")
    lines.append("--- Outputs ---")
    for name in order:
        if name in outputs:
            output = outputs[name]
            lines.append(
                f"  [{name}] from={output.name}, format={output.format}, "
                f"mode={output.mode.capitalize()}, path={output.path}"
            )
    lines.append("")
    lines.append(
        f"Total: {len(pipeline.inputs)} inputs, {len(pipeline.steps)} transformations, "
        f"{len(pipeline.outputs)} outputs"
    )
    lines.append(f"Execution waves: {len(pipeline.schedule.waves)}")
    lines.extend(f"  Wave {i}: {', '.join(wave)}" for i, wave in enumerate(pipeline.schedule.waves))
    return "\n".join(lines)
