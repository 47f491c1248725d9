/*
 * graph.h - pipeline tiers: a tier whose backend is "graph" runs a small
 * DAG of steps (models of the package, and tensor operations between them)
 * as one tier: one request, one deadline, one outcome. A failing step
 * fails the tier, and the tier chain (tier.c) goes on to the next tier as
 * for any other failure. docs/pipelines.md is the user's reference.
 *
 *   {"name": "pipeline", "backend": "graph",
 *    "steps": [
 *      {"name": "mel", "model": "model/mel.onnx",
 *       "inputs": {"input": "audio"}, "outputs": {"output": "mel"}},
 *      {"name": "windows", "op": "window", "input": "mel", "axis": 0,
 *       "size": 76, "step": 8, "output": "win"},
 *      ...],
 *    "outputs": ["score"]}
 *
 * A model step runs a file of the package through a backend ("backend",
 * default onnx; never graph) and takes that backend's tier options
 * ("options", "state", "context"); "inputs" maps the model's input names to
 * graph tensors, "outputs" its output names to new graph tensors. An op
 * step reads "input" (concat: "inputs") and writes "output":
 *   slice        axis, start, end (negative: from the end; end omitted: to it)
 *   window       axis, size, step: sliding windows along axis, a new axis
 *                of window count before it ([F,32] -> [W,76,32])
 *   reshape      shape (0 keeps that dimension, one -1 takes the rest)
 *   concat       inputs, axis
 *   affine       scale, offset: x * scale + offset (float32)
 *   activation   activation: softmax | sigmoid over the last axis (float32)
 *   standardize  mean, std: (x - mean[i % n]) / std[i % n], the tabular
 *                preprocessing of pipeline.c (float32)
 *   cast         dtype
 * Any step may carry "when": {"tensor": T, "at_least": X}: it runs only
 * when T's largest element is at least X; otherwise it, and every step that
 * reads what it would write, is skipped, and those tensors are absent from
 * the answer (a VAD gating a detector).
 * A tensor no step writes is a graph input: a package input or a tier
 * constant. The graph's outputs are the tier's "outputs", else the
 * package's declared outputs, else every tensor no step reads.
 *
 * What it owns: the parsed graph, its step instances (each step's backend
 * instance) and a session per client session holding each stateful step's
 * backend session. What it does not: tier policy (tier.c), the package's
 * pre/post-processing around the whole tier (pipeline.c, called by tier.c).
 *
 * Checked in full before anything runs: at activation (load.c asks the
 * backend for its files, which parses the steps: unknown op or field, a
 * tensor written twice, a cycle, too many steps or tensors, a step whose
 * outputs nobody reads), then at load with the models' declared inputs and
 * outputs: missing tensors, dtype and shape mismatches along every edge.
 */
#ifndef KEEL_INFER_GRAPH_H
#define KEEL_INFER_GRAPH_H

#include "infer/backend.h"

#define KEEL__GRAPH_MAX_STEPS   32
#define KEEL__GRAPH_MAX_TENSORS 64
/* the most bytes one op step may produce (a window op multiplies its input) */
#define KEEL__GRAPH_MAX_BYTES (256u << 20)

/* The backend itself is keel__backend_graph (backend.h). */

/* Checks a graph tier's manifest object (steps, ops, edges, cycles) without
 * loading a model; the message names the step and field. What load adds:
 * the models' own inputs and outputs, and shapes. */
KEEL_WUR int keel__graph_check(const cJSON *tier, keel_error *err);

#endif
