// A client of cofid written only against the types that openapi-typescript generates from
// openapi/openapi.json (api.d.ts, made by scripts/client-check.sh): it submits a batch, runs
// it, polls it until it ends and reads each call's transcript from its stt stage's result.
// If the description stops typing what a client needs (metadata, a stage's result), this
// file no longer compiles. Run: node out/client.js BASE_URL TOKEN|- FILE...
import type { components, paths } from "./api";

type Batch = components["schemas"]["Batch"];
type CallDetail = components["schemas"]["CallDetail"];
type CreateBatch = paths["/batches"]["post"]["requestBody"]["content"]["application/json"];
type Created = paths["/batches"]["post"]["responses"]["201"]["content"]["application/json"];
type CallPage = paths["/batches/{id}/calls"]["get"]["responses"]["200"]["content"]["application/json"];
type FinalState = Extract<Batch["state"], "completed" | "completed_with_errors" | "cancelled">;

declare const process: { argv: string[]; exitCode?: number };

class Api {
  constructor(private readonly base: string, private readonly token: string | null) {}

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { Accept: "application/json" };
    if (this.token !== null) headers["Authorization"] = `Bearer ${this.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const init: RequestInit = { method, headers };
    if (body !== undefined) init.body = JSON.stringify(body);
    const r = await fetch(this.base + path, init);
    if (!r.ok) {
      const p = (await r.json()) as components["schemas"]["Problem"];
      throw new Error(`${method} ${path}: ${p.status} ${p.title}: ${p.detail}`);
    }
    return (await r.json()) as T;
  }
}

function isFinal(b: Batch): b is Batch & { state: FinalState } {
  return ["completed", "completed_with_errors", "cancelled"].includes(b.state) && b.finished_at !== null;
}

/** Submits files as a batch with metadata, runs it and returns it once it has ended. */
async function submitAndWait(api: Api, files: string[]): Promise<Batch> {
  const req: CreateBatch = {
    name: "typescript-client",
    files,
    metadata: { source: "tests/client", attempt: 1, tags: ["generated", "types"] },
    priority: 2,
  };
  const created = await api.call<Created>("POST", "/batches", req);
  await api.call<Batch>("POST", `/batches/${created.id}/run`, { mode: "pipelined" });
  for (;;) {
    const b = await api.call<Batch>("GET", `/batches/${created.id}`);
    const done = b.stages.map((s) => `${s.name} ${s.done}/${b.file_count}`).join(" ");
    console.error(`batch ${b.id} ${b.state} ${done} eta ${b.eta_seconds ?? "-"}`);
    if (isFinal(b)) return b;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** The transcript and language of one call, from its stt and lid stage results. */
async function transcriptOf(api: Api, batchId: number, callId: string): Promise<[string, string]> {
  const call = await api.call<CallDetail>("GET", `/batches/${batchId}/calls/${callId}`);
  const stt = call.stages.find((s) => s.name === "stt");
  const lid = call.stages.find((s) => s.name === "lid");
  const transcript: string | undefined = stt?.result?.transcript;
  const language: string | undefined = lid?.result?.language;
  if (transcript === undefined || language === undefined) {
    throw new Error(`call ${call.id}: no transcript or language (state ${call.state})`);
  }
  return [transcript, language];
}

async function main(argv: string[]): Promise<number> {
  const [base, token, ...files] = argv;
  if (base === undefined || token === undefined || files.length === 0) {
    console.error("usage: client.js BASE_URL TOKEN|- FILE...");
    return 64;
  }
  const api = new Api(base, token === "-" ? null : token);
  const batch = await submitAndWait(api, files);
  const page = await api.call<CallPage>("GET", `/batches/${batch.id}/calls?limit=1000`);
  for (const c of page.calls) {
    const [transcript, language] = await transcriptOf(api, batch.id, c.id);
    console.log(JSON.stringify({ call: c.id, file: c.file, language, transcript }));
  }
  return batch.state === "completed" ? 0 : 2;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    console.error(String(e));
    process.exitCode = 1;
  },
);
