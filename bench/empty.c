/* An empty program: the floor of bench_libdw_link.  Built twice, once
 * linked with libdw (bench_empty_dw), which it never calls. */
int main(void)
{
    return 0;
}
