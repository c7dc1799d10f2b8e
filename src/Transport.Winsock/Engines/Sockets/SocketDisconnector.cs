using System.Net.Sockets;

namespace Transport.Winsock.Engines.Sockets;

/// <summary>DisconnectEx(TF_REUSE_SOCKET) on Windows: readies a socket for another accept.</summary>
internal sealed class SocketDisconnector : AwaitableSocketEventArgs
{
    public SocketDisconnector()
    {
        DisconnectReuseSocket = true;
    }

    public ValueTask<int> DisconnectAsync(Socket socket) => Await(socket.DisconnectAsync(this));
}
