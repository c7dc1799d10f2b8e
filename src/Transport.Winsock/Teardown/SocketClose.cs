using System.Net.Sockets;

namespace Transport.Winsock.Teardown;

/// <summary>The plain end of a socket that will not be reused.</summary>
internal static class SocketClose
{
    /// <summary>
    /// Closes the socket handle, which also ends any operation pending on it. An abortive close sets a
    /// zero linger first, so the peer gets an RST instead of a FIN.
    /// </summary>
    public static void Close(Socket socket, bool abortive)
    {
        if (abortive)
        {
            try
            {
                socket.LingerState = new LingerOption(enable: true, seconds: 0);
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
                // Already closed or already reset: there is nothing left to abort.
            }
        }

        socket.Dispose();
    }
}
