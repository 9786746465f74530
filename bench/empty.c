/* An empty program, linked with different libraries by bench/CMakeLists.txt
 * for link_cost.c and libdw_link.c.  The libraries are loaded even though
 * nothing is called (linked with --no-as-needed). */
int main(void)
{
    return 0;
}
