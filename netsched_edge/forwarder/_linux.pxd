# C declarations the relay needs beyond netsched_client/io/includes/system.pxd
# (which it cimports for sockaddr, msghdr, mmsghdr and the mmsg calls):
# epoll, and opening a connected upstream socket.
#
# The relay is built for Linux only; elsewhere the shim makes every call fail
# with ENOSYS, the extension still compiles and the package uses the
# pure-Python reference relay.

from libc.stdint cimport uint32_t, uint64_t

from netsched_client.io.includes.system cimport sockaddr, socklen_t


cdef extern from * nogil:
    """
    #include <errno.h>
    #include <stdint.h>
    #include <sys/socket.h>
    #include <unistd.h>
    #ifdef __linux__
    #include <sys/epoll.h>
    #define NS_HAVE_EPOLL 1
    static int ns_flow_socket(int family) {
        return socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    }
    #else
    #define NS_HAVE_EPOLL 0
    typedef union epoll_data { void *ptr; int fd; uint32_t u32; uint64_t u64; } epoll_data_t;
    struct epoll_event { uint32_t events; epoll_data_t data; };
    #define EPOLLIN 1
    #define EPOLLERR 8
    #define EPOLL_CTL_ADD 1
    #define EPOLL_CLOEXEC 0
    static int epoll_create1(int f) { (void)f; errno = ENOSYS; return -1; }
    static int epoll_ctl(int e, int o, int fd, struct epoll_event *ev) {
        (void)e; (void)o; (void)fd; (void)ev; errno = ENOSYS; return -1;
    }
    static int epoll_wait(int e, struct epoll_event *ev, int n, int t) {
        (void)e; (void)ev; (void)n; (void)t; errno = ENOSYS; return -1;
    }
    static int ns_flow_socket(int family) { (void)family; errno = ENOSYS; return -1; }
    #endif
    """
    ctypedef union epoll_data_t:
        uint64_t u64

    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data

    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    int ns_flow_socket(int family)  # non-blocking, close-on-exec UDP socket

    int connect(int fd, const sockaddr *addr, socklen_t length)
    int setsockopt(int fd, int level, int name, const void *value, socklen_t length)
    int close(int fd)

    enum:
        EPOLLIN
        EPOLL_CTL_ADD
        EPOLL_CLOEXEC
        SOL_SOCKET
        SO_RCVBUF
