using System.Buffers;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Transport.Winsock.Engines.Sockets;

/// <summary>Sends a whole <see cref="ReadOnlySequence{T}"/>: one buffer when it is one segment, a gather list otherwise.</summary>
internal sealed class SocketSender(bool inlineContinuations = false) : AwaitableSocketEventArgs(inlineContinuations)
{
    private List<ArraySegment<byte>>? _segments;

    public ValueTask<int> SendAsync(Socket socket, in ReadOnlySequence<byte> buffers)
    {
        if (buffers.IsSingleSegment)
        {
            // A SocketAsyncEventArgs holds either a buffer or a buffer list, never both.
            if (BufferList is not null)
            {
                BufferList = null;
            }

            SetBuffer(MemoryMarshal.AsMemory(buffers.First));
        }
        else
        {
            SetBuffer(null, 0, 0);
            BufferList = Gather(buffers);
        }

        return Await(socket.SendAsync(this));
    }

    private List<ArraySegment<byte>> Gather(in ReadOnlySequence<byte> buffers)
    {
        var segments = _segments ??= new List<ArraySegment<byte>>();
        segments.Clear();
        foreach (var memory in buffers)
        {
            if (!MemoryMarshal.TryGetArray(memory, out var segment))
            {
                throw new InvalidOperationException("The memory pool handed out a block that is not backed by an array.");
            }

            segments.Add(segment);
        }

        return segments;
    }
}
