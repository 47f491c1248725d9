/*
 * oip.h - the Open Inference Protocol (KServe v2) request and response
 * codec: JSON tensors, the binary tensor data extension, and keel's image
 * convenience. Pure translation between bytes and keel__infer_req/resp.
 */
#ifndef KEEL_HTTP_OIP_H
#define KEEL_HTTP_OIP_H

#include "infer/infer.h"

typedef struct keel__oip_req {
    keel__infer_req req;
    keel__tensor tensors[KEEL__MAX_IO]; /* data malloc'd (or pointing into body) */
    bool owned[KEEL__MAX_IO];
    size_t ntensors;
    void *image; /* decoded base64 image (malloc'd) */
    char id[128];
    char tier[32], session[128];
    bool binary_all;                /* parameters.binary_data_output */
    bool complex;                   /* parameters.complex: escalate whatever the confidence */
    char outputs[KEEL__MAX_IO][64]; /* requested outputs ("" none = all) */
    bool out_binary[KEEL__MAX_IO];
    size_t noutputs;
} keel__oip_req;

/* Parses body (len bytes). json_len: the JSON header's length when the
 * binary extension is used (Inference-Header-Content-Length), else len.
 * The image input name lets a BYTES input carry an encoded image. */
KEEL_WUR int keel__oip_parse(const char *body, size_t len, size_t json_len, const char *image_input,
                             keel__oip_req *r, keel_error *err);
void keel__oip_done(keel__oip_req *r);

/* Encodes a response: JSON, or JSON + binary outputs (*ret_json_len then
 * says where the JSON ends; it equals *ret_len without binary). */
KEEL_WUR int keel__oip_response(const keel__oip_req *r, const keel__infer_resp *resp, char **ret,
                                size_t *ret_len, size_t *ret_json_len, keel_error *err);

/* Open Inference Protocol datatype name of a dtype ("FP32", "BYTES", ...;
 * JSON outputs travel as BYTES). Static storage. */
const char *keel__kserve_dtype(int dtype);
/* Open Inference Protocol model metadata of m (malloc'd JSON; NULL when
 * out of memory), rendered from keel__model_describe. */
char *keel__model_metadata_json(const keel__model *m);

#endif
