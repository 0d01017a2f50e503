// gquant-generate: in progress (issue 5).
int main() { return 0; }
