using System.Net.Sockets;

namespace Transport.Winsock.Engines.Sockets;

/// <summary>Receives into pipe memory; a zero-byte receive waits for data without holding a buffer.</summary>
internal sealed class SocketReceiver(bool inlineContinuations = false) : AwaitableSocketEventArgs(inlineContinuations)
{
    public ValueTask<int> WaitForDataAsync(Socket socket)
    {
        SetBuffer(Memory<byte>.Empty);
        return Await(socket.ReceiveAsync(this));
    }

    public ValueTask<int> ReceiveAsync(Socket socket, Memory<byte> buffer)
    {
        SetBuffer(buffer);
        return Await(socket.ReceiveAsync(this));
    }
}
