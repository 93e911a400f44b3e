/* Exact, globally optimal, weighted 1D k-means.
 *
 * The n values of each group are reduced to their m distinct values with total weights (one
 * counting pass into 65536 bins when every value is an exact fp16 or bf16 number, otherwise a
 * radix sort), then a dynamic programme over the m points finds the partition into k intervals
 * with the least weighted sum of squares. Each DP layer is a row-minima search in a totally
 * monotone matrix, by monotone divide and conquer bounded below by the previous layer's
 * argmins; the argmin table (2 bits an entry) is kept while it fits `table_budget` bytes,
 * past that the partition is found by Hirschberg-style recursion in O(m) memory.
 *
 * C99, no globals, thread safe: every call owns its memory.
 */
#ifndef ONNXCOMPRESS_KMEANS1D_H
#define ONNXCOMPRESS_KMEANS1D_H

#include <stddef.h>
#include <stdint.h>

/* Element types of the values and of the weights. */
#define OC_FLOAT16 0
#define OC_FLOAT32 1
#define OC_FLOAT64 2

/* Return codes. */
#define OC_OK 0
#define OC_ERR_NONFINITE 1   /* a value is NaN or infinite (its flat index in *bad_index) */
#define OC_ERR_WEIGHT 2      /* a weight is negative, NaN or infinite (index in *bad_index) */
#define OC_ERR_ZERO_WEIGHT 3 /* every weight of a group is zero (group in *bad_index) */
#define OC_ERR_NOMEM 4       /* an allocation failed */
#define OC_ERR_ARG 5         /* n == 0, k outside 1..65536, an unknown dtype, or n >= 2^32 */

/* Clusters n_groups independent groups of n values each (x holds n_groups * n values, group
 * after group). weights is NULL or holds as many values as x.
 *
 * Per group g, writes:
 *   labels[g*n + i]       cluster of value i: uint8_t when k <= 256, else uint16_t;
 *                         clusters are numbered in ascending centroid order, equal values
 *                         always share a label
 *   centroids[g*k + c]    the n_clusters[g] = min(k, m) ascending weighted means; entries past
 *                         n_clusters[g] repeat the last centroid
 *   sse_by_k[g*k + j]     optimal weighted SSE with j + 1 clusters (0 past m clusters)
 *   sse[g]                weighted SSE of the returned clustering
 */
int oc_kmeans1d(const void *x, int x_dtype, const void *weights, int w_dtype, size_t n,
                size_t n_groups, uint32_t k, size_t table_budget, void *labels,
                double *centroids, double *sse_by_k, uint32_t *n_clusters, double *sse,
                size_t *bad_index);

#endif
