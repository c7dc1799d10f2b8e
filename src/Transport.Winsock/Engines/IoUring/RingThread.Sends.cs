namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// A ring thread's send operations, lent to a connection for one send at a time: an idle connection
/// (the common state of a held keep-alive connection) holds none, nor a slot of the operation table.
/// </summary>
internal sealed partial class RingThread
{
    // Enough for the sends a ring has in flight at once under load; beyond it, a returned one lets go of its slot.
    private const int MaxIdleSends = 256;
    private readonly Lock _sendsLock = new();
    private readonly Stack<SendOperation> _idleSends = new();

    /// <summary>A send operation for <paramref name="io"/>'s next send, from any thread.</summary>
    public SendOperation RentSend(IoUringConnectionIo io)
    {
        SendOperation? send;
        lock (_sendsLock)
        {
            _idleSends.TryPop(out send);
        }

        send ??= new SendOperation(this);
        send.Owner = io;
        return send;
    }

    /// <summary>
    /// Takes back a send whose result its connection has taken: nothing of it is in the kernel. A retired
    /// one never comes here (<see cref="RingOperation.Retired"/>).
    /// </summary>
    public void ReturnSend(SendOperation send)
    {
        send.Owner = null;
        lock (_sendsLock)
        {
            if (_idleSends.Count < MaxIdleSends)
            {
                _idleSends.Push(send);
                return;
            }
        }

        Unregister(send);
    }
}
