/* A small strict JSON reader for the example job: validates a whole
 * document and extracts top-level string and number members of an object.
 * Strings are decoded into malloc'd UTF-8 (\uXXXX escapes included). */
#ifndef JOB_JSON_H
#define JOB_JSON_H
#include <stdbool.h>
#include <stddef.h>

typedef struct {
  char *op, *text, *reason, *url; /* NULL when absent or not a string */
  bool has_delay;
  double delay;
} job_request_t;

/* Returns NULL on success, else a static description of the syntax error
 * (with *err_at set to the byte offset). */
const char *job_request_parse(const char *s, size_t len, job_request_t *out, size_t *err_at);
void job_request_free(job_request_t *r);
#endif
